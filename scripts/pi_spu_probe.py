"""Why does pi_spu matter at intermediate pi_core in the semi-synthetic construction?

Trains MMCL cells of the smoke config (embedded digits) and scores each trained model with
several zero-shot prompt sets, so the prompt explanation is tested on the same models:

* ``plain``    -- "a photo of the digit seven" (the toolkit's prompt);
* ``colours``  -- the mean of the normalised embeddings of "a photo of the digit seven in <c>"
  over the ten colours (a prompt ensemble that marginalises the colour word).

Training variants (``--variant``): ``base`` (300 steps), ``long`` (900), ``xlong`` (2700), ``transformer``
(the transformer text tower), ``noprefix`` (captions and prompts without "a photo of the digit").

  PYTHONPATH=src python scripts/pi_spu_probe.py --variant base --seeds 0 1 2
Prints one JSON line per (variant, pi_core, pi_spu, seed, prompt).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from mmclshift.config import replace
from mmclshift.data.digits import load_digits
from mmclshift.data.semisynthetic import (
    MAX_CAPTION_LEN,
    NUM_CLASSES,
    PREFIX,
    VOCAB,
    build_splits,
    caption_words,
    encode,
    pad_tokens,
)
from mmclshift.evaluate.semisynthetic import accuracy, predict
from mmclshift.experiments.semisynthetic import demo_config
from mmclshift.models.towers import TwoTowerModel
from mmclshift.train.images import clamp_logit_scale, mmcl_loss_fn, train_loop


def strip_prefix(tokens: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(tokens)
    out[:, : tokens.shape[1] - len(PREFIX)] = tokens[:, len(PREFIX):]
    return out


def prompt_sets(noprefix: bool) -> dict[str, torch.Tensor]:
    plain = pad_tokens([encode(caption_words(k, None, None)) for k in range(NUM_CLASSES)])
    coloured = pad_tokens([encode(caption_words(k, c, None)) for k in range(NUM_CLASSES)
                           for c in range(NUM_CLASSES)])
    if noprefix:
        plain, coloured = strip_prefix(plain), strip_prefix(coloured)
    return {"plain": plain, "colours": coloured}


@torch.no_grad()
def head(model: TwoTowerModel, tokens: torch.Tensor) -> torch.Tensor:
    model.eval()
    z = F.normalize(model.text(tokens), dim=-1)
    if z.shape[0] > NUM_CLASSES:
        z = F.normalize(z.view(NUM_CLASSES, -1, z.shape[-1]).mean(1), dim=-1)
    return z


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="base", choices=["base", "long", "xlong", "transformer", "noprefix"])
    ap.add_argument("--pi-core", type=float, nargs="+", default=[0.5])
    ap.add_argument("--pi-spu", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = demo_config()
    if args.variant in ("long", "xlong"):
        base = replace(base, **{"train.steps": 900 if args.variant == "long" else 2700})
    if args.variant == "transformer":
        base = replace(base, **{"model.text_encoder": "transformer"})
    digits = load_digits(None)
    for seed in args.seeds:
        for pc in args.pi_core:
            for ps in args.pi_spu:
                cfg = replace(base, seed=seed, **{"data.pi_core": pc, "data.pi_spu": ps})
                t0 = time.perf_counter()
                data = build_splits(digits, cfg.data, seed, ["id", "ood"])
                tokens = data["train"].tokens
                if args.variant == "noprefix":
                    tokens = strip_prefix(tokens)
                torch.manual_seed(seed)
                gen = torch.Generator().manual_seed(seed + 1)
                model = TwoTowerModel(cfg.model, len(VOCAB), MAX_CAPTION_LEN,
                                      init_temperature=cfg.mmcl.temperature,
                                      learn_temperature=cfg.mmcl.learn_temperature)
                train_loop(model, mmcl_loss_fn(model, cfg.mmcl), data["train"].images, tokens,
                           cfg.train, gen, method="mmcl", device=torch.device("cpu"), progress=False,
                           after_step=clamp_logit_scale(model, cfg.mmcl))
                for name, prompts in prompt_sets(args.variant == "noprefix").items():
                    h = head(model, prompts)
                    row = {"variant": args.variant, "pi_core": pc, "pi_spu": ps, "seed": seed,
                           "prompt": name}
                    for split in ("id", "ood"):
                        test = data[split]
                        row[split] = accuracy(predict(model.image, test.images,
                                                      torch.device("cpu"), head=h), test.labels)[0]
                    row["seconds"] = round(time.perf_counter() - t0, 1)
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
