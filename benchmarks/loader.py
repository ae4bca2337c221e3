"""Samples/s of the real-data loader against workers (0, 1, 2), beside a plain torchvision loader.

Data: the COCO-format fixture built from scikit-image photos with ``--per-photo`` crops of each of
its 6 photos (default 334: 2,004 JPEGs of ``--size`` px, the size the trainer tests use), read
with ``mmcl-tiny``'s preprocessing (OpenCLIP's resize, centre crop, to-tensor, normalise).

Arms, each a full pass over the epoch in batches of ``--batch``, interleaved over ``--repeats``
after one untimed warm-up pass of each:

* ``ours w=N``   -- :func:`mmclshift.data.loader.iter_batches` with N DataLoader workers (decoding,
                    transform and tokenisation in the workers; caption choice, labels, skip
                    counting, batch assembly exactly as the serial path). The workers are a
                    :func:`~mmclshift.data.loader.batch_pool`, started by the warm-up pass and
                    kept across passes, as a training run keeps them across its epochs;
* ``ours w=N cold`` -- the same, with workers started for the pass and stopped after it (the
                    fork and the workers' first copy-on-write touches inside the timer: what
                    every epoch paid before pools persisted);
* ``tv w=N``     -- a plain ``torch.utils.data.DataLoader`` over a Dataset (open_clip_train's
                    ``CsvDataset``) that opens each image with torchvision's ``default_loader``,
                    applies the same transform and tokenises the same caption; same order, same
                    batch size, N workers kept across passes (``persistent_workers``; no caption
                    choice, labels or skip counting).

Every arm reads the COCO file once, before its passes (a run builds its stream once).

The images of every arm are compared with ``ours w=0`` and the number of differing samples printed
(must be 0). Then the training loop: samples/s of :func:`mmclshift.train.clip.train` with
``mmcl-tiny`` and 0 and 2 workers, and of the same steps on batches decoded beforehand (the model
alone); "loader-bound" means the loop with workers is clearly slower than the model alone.

A **ceiling** is printed beside them: the same chunks decoded by 2 forked processes, each taking
every other chunk, with nothing passed back and nothing else running (their start outside the
timer), over ``ours w=0``. It is what the machine's cores give any loader with 2 workers; on a
virtual machine whose 2 cores slow each other down it is well below 2.

The last line is ``ratio: <median ours w=2 / median ours w=0>`` (the parallel loader over the
serial path, per pass of an epoch with the run's workers already started; higher is better);
the line before it gives the same ratio for cold passes. All rates are min and median over the
repeats. One torch thread in the main process (DataLoader workers use one each). "CPU cores used"
is the CPU time of the process and its workers (live or reaped) over the wall time: workers can only speed a pass up when the machine
gives the benchmark more than one core (on a shared machine with the kernel's autogroup
scheduling, every session shares the cores equally, however many processes it runs).

    PYTHONPATH=src python benchmarks/loader.py [--per-photo 334] [--size 48] [--batch 64]
        [--repeats 5] [--train-steps 60]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch


def rates(xs: list[float]) -> str:
    return f"min {min(xs):8.1f}  median {statistics.median(xs):8.1f}"


def _live_children_seconds() -> float:
    """CPU time of this process's live children (kept DataLoader workers), from /proc."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    try:
        kids = open(f"/proc/{me}/task/{me}/children").read().split()
    except OSError:
        return 0.0
    for pid in kids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def cpu_seconds() -> float:
    """CPU time of this process and of its children, live (kept workers) or reaped."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + _live_children_seconds()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-photo", type=int, default=334)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--workers", default="0,1,2")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",")]

    from torchvision.datasets.folder import default_loader

    from mmclshift.data.captions import load_vocab
    from mmclshift.data.fixtures import build_fixtures
    from mmclshift.data.image_text import RawPair
    from mmclshift.data.loader import batch_pool, iter_batches
    from mmclshift.experiments.real import build_stream, config_from_dict
    from mmclshift.models.clip_models import create_clip
    from mmclshift.runs import RunDir
    from mmclshift.train.clip import TrainSettings, openclip_optimizer, train

    tmp = tempfile.mkdtemp(prefix="mmclshift-loader-")
    try:
        fx = build_fixtures(f"{tmp}/fx", per_photo=args.per_photo, size=args.size)
        cfg = config_from_dict({"seed": 0, "data": {"format": "coco", "path": str(fx["coco"]),
                                                     "vocab": str(fx["vocab"]),
                                                     "no_class": "keep"},
                                "model": {"name": "mmcl-tiny"}})
        vocab = load_vocab(str(fx["vocab"]))
        model, preprocess, tok = create_clip("mmcl-tiny")

        def stream() -> Any:
            return build_stream(cfg, preprocess, vocab)

        plan = [e for e in stream().plan(0) if isinstance(e, RawPair)]
        pairs = [(e.image, e.caption) for e in plan if e.image and os.path.isfile(e.image)]
        n_jpegs = len(pairs)

        class Plain(torch.utils.data.Dataset):
            """open_clip_train's CsvDataset: image through the transform, caption tokenised."""

            def __len__(self) -> int:
                return len(pairs)

            def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
                path, caption = pairs[i]
                return preprocess(default_loader(path)), tok([caption])[0]

        cores: dict[str, list[float]] = {}

        def timed(name: str, batches: Any) -> tuple[float, torch.Tensor]:
            t, c = time.perf_counter(), cpu_seconds()
            out = list(batches)  # a cold pass stops and reaps its workers at its end
            dt = time.perf_counter() - t
            cores.setdefault(name, []).append((cpu_seconds() - c) / dt)
            images = torch.cat(out)
            return len(images) / dt, images

        streams = {w: stream() for w in workers}  # one per arm, built once (as a run does)
        pools = {w: batch_pool(streams[w], workers=w, tokenizer=tok) for w in workers}

        def run_ours(w: int) -> tuple[float, torch.Tensor]:
            batches = (b.images() for b in iter_batches(streams[w], args.batch, 0, pool=pools[w]))
            return timed(f"ours w={w}", batches)

        cold_stream = stream()

        def run_cold(w: int) -> tuple[float, torch.Tensor]:
            batches = (b.images() for b in iter_batches(cold_stream, args.batch, 0, workers=w,
                                                        tokenizer=tok))
            return timed(f"ours w={w} cold", batches)

        loaders = {w: torch.utils.data.DataLoader(Plain(), batch_size=args.batch, shuffle=False,
                                                  drop_last=True, num_workers=w,
                                                  persistent_workers=w > 0) for w in workers}

        def run_tv(w: int) -> tuple[float, torch.Tensor]:
            it = iter(loaders[w])  # the workers started by the warm-up pass are reused

            def images() -> Any:
                for x, _ in it:
                    yield x

            return timed(f"tv   w={w}", images())

        arms = [(f"ours w={w}", run_ours, w) for w in workers] + \
               [(f"ours w={w} cold", run_cold, w) for w in workers if w] + \
               [(f"tv   w={w}", run_tv, w) for w in workers]
        got: dict[str, list[float]] = {name: [] for name, _, _ in arms}
        reference = run_ours(0)[1]  # the images to compare with
        decode = pools[0].fn  # the chunk decoder the workers run
        plan = list(streams[0].plan(0))
        tasks = [plan[i:i + args.batch] for i in range(0, len(plan), args.batch)]

        def decode_part(part: int, go: Any) -> None:
            go.wait()
            for task in tasks[part::2]:
                decode(task)

        def run_probe() -> float:
            """Decoding alone: 2 forked processes each decode every other chunk; nothing is
            passed back and nothing else runs, so no loader on 2 workers can do better."""
            ctx = multiprocessing.get_context("fork")
            go = ctx.Event()
            procs = [ctx.Process(target=decode_part, args=(part, go)) for part in (0, 1)]
            for proc in procs:
                proc.start()
            time.sleep(0.2)  # forked and waiting: their start-up stays outside the timer
            t = time.perf_counter()
            go.set()
            for proc in procs:
                proc.join()
            return len(reference) / (time.perf_counter() - t)

        probe: list[float] = []
        for _, fn, w in arms:
            fn(w)  # warm-up: one pass of each arm (starts the kept workers)
        run_probe()  # warm-up
        differing: dict[str, int] = {}
        for _ in range(args.repeats):
            probe.append(run_probe())
            for name, fn, w in arms:
                rate, images = fn(w)
                got[name].append(rate)
                same = images.shape == reference.shape and \
                    bool(torch.equal(images, reference))
                n_diff = 0 if same else (
                    int((images != reference).flatten(1).any(1).sum())
                    if images.shape == reference.shape else len(reference))
                differing[name] = max(differing.get(name, 0), n_diff)

        print(f"{n_jpegs} JPEGs of {args.size}px, batch {args.batch}, {args.repeats} repeats, "
              f"load {os.getloadavg()[0]:.2f} (1-min) at the end of the loader arms")
        print("loader samples/s:")
        for name, _, _ in arms:
            print(f"  {name}: {rates(got[name])}   CPU cores used (median) "
                  f"{statistics.median(cores[name]):.2f}   differing samples vs ours w=0: "
                  f"{differing[name]}")
        med = {name: statistics.median(v) for name, v in got.items()}
        for w in workers:
            if w and f"tv   w={w}" in med:
                print(f"ours w={w} / tv w={w}: {med[f'ours w={w}'] / med[f'tv   w={w}']:.2f}")
        print(f"tv w=0 / ours w=0: {med['tv   w=0'] / med['ours w=0']:.2f}")
        print(f"decoding alone in 2 processes (no loader; fork outside the timer): {rates(probe)}")
        print(f"ceiling: decoding alone in 2 processes / ours w=0 = "
              f"{statistics.median(probe) / med['ours w=0']:.3f} (what this machine's 2 cores give "
              f"any 2-worker loader)")
        for pool in pools.values():
            pool.close()
        for loader in loaders.values():
            if loader._iterator is not None:
                loader._iterator._shutdown_workers()

        # ------------------------------------------------------------------ training loop
        batches = [(b.images(), b.texts()) for b in iter_batches(stream(), args.batch, 0,
                                                                 tokenizer=tok)]
        settings = dict(steps=args.train_steps, batch_size=args.batch, lr=5e-4,
                        checkpoint_every=10**9, log_every=10**9, precision="fp32")

        def model_only() -> float:
            torch.manual_seed(0)
            m, _, _ = create_clip("mmcl-tiny")
            opt = openclip_optimizer(m, TrainSettings(**settings))  # the trainer's optimizer
            from mmclshift.losses import clip_loss_distributed

            t = time.perf_counter()
            for i in range(args.train_steps):
                images, texts = batches[i % len(batches)]
                out = m(images, texts)
                loss = clip_loss_distributed(out["image_features"], out["text_features"],
                                             out["logit_scale"], normalize=False, rank=0,
                                             world_size=1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return args.train_steps * args.batch / (time.perf_counter() - t)

        def train_with(w: int, i: int) -> float:
            torch.manual_seed(0)
            m, _, _ = create_clip("mmcl-tiny")
            run = RunDir.create(f"{tmp}/run-w{w}-{i}", cfg)
            return train(m, "mmcl", "clip", stream(), tok,
                         TrainSettings(**settings, workers=w), run, "clip",
                         progress=False).samples_per_s

        train_got: dict[str, list[float]] = {"model alone": [], "train w=0": [], "train w=2": []}
        model_only()
        train_with(2, -1)  # warm-ups
        for i in range(args.repeats):
            train_got["model alone"].append(model_only())
            train_got["train w=0"].append(train_with(0, i))
            train_got["train w=2"].append(train_with(2, i))
        print(f"training loop, mmcl-tiny, {args.train_steps} steps x {args.batch} "
              f"(load {os.getloadavg()[0]:.2f}):")
        for name, v in train_got.items():
            print(f"  {name}: {rates(v)}")
        tm = {k: statistics.median(v) for k, v in train_got.items()}
        print(f"train w=2 / model alone: {tm['train w=2'] / tm['model alone']:.2f}  "
              f"train w=0 / model alone: {tm['train w=0'] / tm['model alone']:.2f}")
        if any(differing.values()):
            raise SystemExit(f"images differ from the serial path: {differing}")
        print(f"cold ratio (workers started per pass): "
              f"{med['ours w=2 cold'] / med['ours w=0']:.3f}")
        print(f"ratio: {med['ours w=2'] / med['ours w=0']:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
