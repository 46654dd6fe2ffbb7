"""A Tinker training script guarded by ulora's screening guard: one line, ``guard(...)``.

    python examples/guarded_script.py BASE_URL MODEL data.jsonl [--plain]
It trains on a conversation file in file order (its first 48 records are the test split) and
prints the final test NLL; the guard's records go to ./guard-records (docs/proxy.md).
"""

import json
import sys

import tinker
from tinker import types
from tinker_cookbook import renderers
from tinker_cookbook.supervised.data import conversation_to_datum
from tinker_cookbook.tokenizer_utils import get_tokenizer

from ulora_remote.tinker import guard


def main(base_url: str, model: str, data: str, steps: int = 60, lr: float = 5e-3,
         guarded: bool = True, out: str = "guard-records", test: int = 48,
         screen: object = None) -> float:
    service = tinker.ServiceClient(base_url=base_url)
    tc = service.create_lora_training_client(base_model=model, rank=8).result()
    if guarded:
        tc = guard(tc, service_client=service, out=out, screen=screen)  # the one line
    renderer = renderers.get_renderer("role_colon", get_tokenizer(model))
    with open(data) as f:
        datums = [conversation_to_datum(json.loads(x)["messages"], renderer, 64) for x in f]
    held_out, train = datums[:test], datums[test:]
    pending = []  # submit a step ahead, as the cookbook does
    for step in range(steps):
        params = types.AdamParams(learning_rate=lr * (1 - step / steps))
        pending.append((tc.forward_backward(train[8 * step:8 * step + 8], "cross_entropy"),
                        tc.optim_step(params)))
        if len(pending) > 1:
            [f.result() for f in pending.pop(0)]
    [f.result() for pair in pending for f in pair]
    outs = tc.forward(held_out, "cross_entropy").result().loss_fn_outputs
    pairs = [(o["logprobs"].tolist(), d.loss_fn_inputs["weights"].tolist())
             for o, d in zip(outs, held_out, strict=True)]
    nll = -sum(lp * w for lps, ws in pairs for lp, w in zip(lps, ws, strict=True)) / sum(
        w for _, ws in pairs for w in ws)
    print(f"final test nll {nll:.4f}")
    return nll


if __name__ == "__main__":
    main(*sys.argv[1:4], guarded="--plain" not in sys.argv)
