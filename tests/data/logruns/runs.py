"""Tiny real training runs whose console output is the logs source's test data (run by record.py, not by tests).

Each run trains for seconds on the CPU: a 2-layer GPT-2 built from a config (no hub download) on synthetic token
ids, or a small MLP for Lightning. Each writes the framework's own record of what it logged (the truth) next to
the console output record.py captures:

- HF Trainer: `trainer.state.log_history`, rewritten after every log call (so a killed run keeps what it logged).
- Lightning: CSVLogger's metrics.csv (Lightning's own step convention).
- DeepSpeed / plain loops: the (step, name, value) the loop printed, as exact floats.

Usage: python runs.py KIND OUTDIR [options]; KIND is hf, lightning, deepspeed or loop.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path


def gpt2(seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg)


class Tokens:
    """Synthetic language-model data: rows of random token ids, labels = inputs (no tokenizer)."""

    def __init__(self, n: int, seed: int):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (n, 16), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def run_hf(out: Path, a: argparse.Namespace) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class History(TrainerCallback):
        """Writes log_history after every log call; optionally crashes or kills the run at a step."""

        def on_log(self, args, state, control, logs=None, **kw):
            (out / "log_history.json").write_text(json.dumps(state.log_history, indent=0))

        def on_step_end(self, args, state, control, **kw):
            if a.crash_at and state.global_step == a.crash_at:
                raise ValueError(f"synthetic failure at step {state.global_step}: loss went bad")
            if a.kill_at and state.global_step == a.kill_at:
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    args = TrainingArguments(
        output_dir=str(out / "ckpt"), max_steps=a.steps, per_device_train_batch_size=4, learning_rate=5e-3,
        logging_steps=a.logging_steps, eval_strategy="steps", eval_steps=a.eval_steps, save_steps=a.save_steps,
        save_strategy="steps" if a.save_steps else "no", report_to="none", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=False,
    )
    trainer = Trainer(model=gpt2(), args=args, train_dataset=Tokens(96, 1), eval_dataset=Tokens(16, 2),
                      callbacks=[History()])
    trainer.train(resume_from_checkpoint=True if a.resume else None)
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=0))


def run_lightning(out: Path, a: argparse.Namespace) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

        def training_step(self, batch, i):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch, i):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), prog_bar=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x.sum(dim=1, keepdim=True) * 0.3
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:48], y[:48]), batch_size=6)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[48:], y[48:]), batch_size=8)
    bar = RichProgressBar() if a.bar == "rich" else TQDMProgressBar()
    trainer = L.Trainer(max_epochs=a.epochs, accelerator="cpu", devices=1, logger=CSVLogger(str(out), name="csv"),
                        callbacks=[bar], log_every_n_steps=1, enable_checkpointing=False,
                        enable_model_summary=True)
    trainer.fit(Model(), train, val)


def run_deepspeed(out: Path, a: argparse.Namespace) -> None:

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    import deepspeed

    if a.log_level == "info":
        from deepspeed.utils.logging import set_log_level_from_string

        set_log_level_from_string("info")  # the logger and its handlers, as DeepSpeed documents
    model = gpt2()
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "steps_per_print": 5,
              "optimizer": {"type": "AdamW", "params": {"lr": 5e-3, "torch_adam": True}},
              "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10, "warmup_max_lr": 5e-3}},
              "wall_clock_breakdown": False}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config,
                                           dist_init_required=True)
    data = Tokens(4 * a.steps, 1)
    truth = []
    for step in range(1, a.steps + 1):
        batch = data.ids[(step - 1) * 4: step * 4]
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        lr = engine.get_lr()[0]
        if step % 5 == 0:
            loop_print(a.shape, step, 0, loss.item(), lr, truth)
    (out / "truth.json").write_text(json.dumps(truth))


def loop_print(shape: str, step: int, epoch: int, loss: float, lr: float, truth: list) -> None:
    """The hand-written loop lines seen in training scripts; the truth is what each number was before printing."""
    if shape == "colon":
        print(f"step {step}: loss {loss:.4f}", flush=True)
        truth.append([step, "loss", loss, ".4f"])
    elif shape == "pipes":
        print(f"iter {step} | loss {loss:.2f} | lr {lr:.1e}", flush=True)
        truth += [[step, "loss", loss, ".2f"], [step, "lr", lr, ".1e"]]
    else:
        print(f"Epoch {epoch} Step {step} loss={loss:.5f} lr={lr:.6f}", flush=True)
        truth += [[step, "loss", loss, ".5f"], [step, "lr", lr, ".6f"]]


def run_loop(out: Path, a: argparse.Namespace) -> None:
    """A plain PyTorch loop (no framework): the shape named by --shape, 4 epochs of 10 steps, global steps."""
    import torch

    model = gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = Tokens(40, 1)
    truth: list = []
    step = 0
    for epoch in range(a.epochs):
        for i in range(0, 40, 4):
            batch = data.ids[i:i + 4]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
            if step % 2 == 0:
                loop_print(a.shape, step, epoch, loss.item(), opt.param_groups[0]["lr"], truth)
    (out / "truth.json").write_text(json.dumps(truth))
    print("Training complete.", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["hf", "lightning", "deepspeed", "loop"])
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--crash-at", type=int, default=0)
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--bar", choices=["rich", "tqdm"], default="tqdm")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--log-level", default="default")
    p.add_argument("--shape", choices=["colon", "pipes", "epoch"], default="colon")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    {"hf": run_hf, "lightning": run_lightning, "deepspeed": run_deepspeed, "loop": run_loop}[a.kind](a.out, a)


if __name__ == "__main__":
    main()
