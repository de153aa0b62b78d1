"""The PyTorch + Hugging Face reference that clsnorm is benchmarked against.

It fine-tunes the way the IsoBN code does: HF tokenizer (tokenized once, before training),
shuffled batches padded to their own longest example, `pooler -> dropout -> linear`, AdamW and a
linear warmup/decay schedule, with clsnorm's default hyperparameters. Two modes, each printing
one JSON line:

  reference.py step --model DIR|base --batch 32 --seq 64 --reps 5 --threads 2
      training steps on the benchmark's fixed batch (the token formula of examples/bench_step.rs)
  reference.py finetune --model DIR --task RTE --data GLUE_DIR --epochs 1 --seed 1 --threads 2
      one full fine-tuning run, then the dev set; wall times, non-pad tokens and dev metrics

Both take --device cpu|cuda (default cpu), --precision fp32|bf16|fp16 (bf16/fp16: the forward
and loss under torch.autocast, as Hugging Face Trainer's --bf16/--fp16; fp16 with
torch.amp.GradScaler) and --fused-adamw (torch.optim.AdamW(fused=True), PyTorch's fastest
update on CPU and GPU; bench/run.py passes it). Without it AdamW takes its default path
(foreach on CUDA). Timings wait for the GPU (torch.cuda.synchronize).

Run through bench/run.sh, which installs this script's venv (bench/setup.sh).
"""

import argparse
import csv
import json
import math
import os
import sys
import time

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

# name: (train file columns (text, pair or None), label column, label values in class order)
TASKS = {
    "RTE": ("sentence1", "sentence2", "label", ["entailment", "not_entailment"]),
    "MRPC": ("#1 String", "#2 String", "Quality", ["0", "1"]),
    "SST-2": ("sentence", None, "label", ["0", "1"]),
    "CoLA": (1, None, 3, ["0", "1"]),  # CoLA has no header: source, label, mark, sentence
}


class IsoBN(nn.Module):
    """IsoBN as the official code (shared/docs/paper.md), with its defaults; the state is
    updated from the detached batch in training, and the scale is detached."""

    def __init__(self, dim, momentum=0.05, eps=1e-3, beta=0.5):
        super().__init__()
        self.register_buffer("cov", torch.zeros(dim, dim))
        self.register_buffer("std", torch.zeros(dim))
        self.momentum, self.eps, self.beta = momentum, eps, beta

    def forward(self, h):
        if self.training:
            with torch.no_grad():
                x = h.detach()
                y = x - x.mean(0, keepdim=True)
                self.cov += self.momentum * (y.t() @ y / x.size(0) - self.cov)
                self.std += self.momentum * (y.pow(2).mean(0).sqrt() - self.std)
        with torch.no_grad():
            c, sd = self.cov, self.std
            denom = torch.outer(sd, sd)
            rho = torch.where(denom > 0, c / denom, torch.zeros_like(c)).clamp(-1, 1)
            gamma = rho.pow(2).mean(1)
            a = (gamma * sd + self.eps).pow(-self.beta)
            diag = c.diagonal()
            a = a * (diag.sum() / ((diag * a.pow(2)).sum() + self.eps)).sqrt()
            a = torch.where(diag.sum() > 0, a, torch.ones_like(a))
        return h * a


class Classifier(nn.Module):
    """BertModel's pooler output -> normalizer -> dropout -> linear, as
    BertForSequenceClassification with the IsoBN code's normalizer."""

    def __init__(self, encoder, n_labels, dropout=None, norm="none", init="hf"):
        super().__init__()
        self.bert = encoder
        self.norm = IsoBN(encoder.config.hidden_size) if norm == "isobn" else nn.Identity()
        # As BertForSequenceClassification: the encoder's hidden dropout unless given.
        self.dropout = nn.Dropout(encoder.config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, n_labels)
        if init == "hf":
            nn.init.normal_(self.classifier.weight, std=encoder.config.initializer_range)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, token_type_ids, attention_mask):
        out = self.bert(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        )
        return self.classifier(self.dropout(self.norm(out.pooler_output)))


def load_encoder(model):
    if model == "base":
        torch.manual_seed(0)
        return BertModel(BertConfig(), add_pooling_layer=True)
    return AutoModel.from_pretrained(model)


def optimizer_and_schedule(model, lr, total_steps, warmup_ratio=0.06, rounding="ceil", fused=False):
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
        **({"fused": True} if fused else {}),
    )
    warmup = (math.ceil if rounding == "ceil" else math.floor)(warmup_ratio * total_steps)

    def factor(step):  # transformers.get_linear_schedule_with_warmup, as clsnorm's schedule
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fixed_batch(batch, seq):
    ids = torch.empty(batch, seq, dtype=torch.long)
    for i in range(batch):
        for j in range(seq):
            ids[i, j] = 101 if j == 0 else 102 if j == seq - 1 else 1000 + (i * 131 + j * 31 + i * j * 7) % 20000
    return ids


class Precision:
    """torch.autocast around forward and loss, and GradScaler for fp16, as HF Trainer."""

    def __init__(self, name, device):
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward_and_step(self, loss, opt):
        self.backward(loss)
        self.step(opt)

    def backward(self, loss):
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, opt):
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()


def synchronizer(device):
    """Waits for the GPU's queue, so host clocks time the work, not its launch."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def step_mode(a):
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = synchronizer(dev)
    model = Classifier(load_encoder(a.model), 2).to(dev)
    model.train()
    opt, sched = optimizer_and_schedule(model, 5e-5, 1000, fused=a.fused_adamw)
    prec = Precision(a.precision, dev)
    ids = fixed_batch(a.batch, a.seq).to(dev)
    types = torch.zeros_like(ids)
    mask = torch.ones_like(ids)
    labels = (torch.arange(a.batch) % 2).to(dev)
    loss_fn = nn.CrossEntropyLoss()
    fwd, bwd, upd, step = [], [], [], []
    for it in range(a.warmup + a.reps):
        sync()
        t0 = time.perf_counter()
        with prec.autocast():
            loss = loss_fn(model(ids, types, mask), labels)
        sync()
        t1 = time.perf_counter()
        if prec.scaler is None:
            loss.backward()
        else:
            prec.scaler.scale(loss).backward()
        sync()
        t2 = time.perf_counter()
        if prec.scaler is None:
            opt.step()
        else:
            prec.scaler.step(opt)
            prec.scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        t3 = time.perf_counter()
        if it >= a.warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            upd.append(t3 - t2)
            step.append(t3 - t0)
    print(json.dumps({
        "side": "reference", "model": a.model, "batch": a.batch, "seq": a.seq,
        "threads": a.threads, "device": a.device, "precision": a.precision,
        "fused_adamw": a.fused_adamw, "step_secs": step, "forward_secs": fwd, "backward_secs": bwd, "update_secs": upd,
    }))


def read_tsv(path, task):
    text, pair, label, classes = TASKS[task]
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = None if task == "CoLA" else next(reader)
        col = (lambda name: name) if header is None else header.index
        ti, li = col(text), col(label)
        pi = None if pair is None else col(pair)
        for r in reader:
            rows.append((r[ti], None if pi is None else r[pi], classes.index(r[li])))
    return rows


def encode(tok, rows, max_len):
    texts = [r[0] for r in rows]
    pairs = None if rows[0][1] is None else [r[1] for r in rows]
    enc = tok(texts, pairs, truncation=True, max_length=max_len)
    return enc["input_ids"], enc["token_type_ids"], [r[2] for r in rows]


def collate(ids, types, idx, pad_id):
    longest = max(len(ids[i]) for i in idx)
    input_ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
    token_types = torch.zeros((len(idx), longest), dtype=torch.long)
    mask = torch.zeros((len(idx), longest), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(ids[i])
        input_ids[row, :n] = torch.tensor(ids[i])
        token_types[row, :n] = torch.tensor(types[i])
        mask[row, :n] = 1
    return input_ids, token_types, mask


def dev_metrics(labels, preds):
    acc = sum(int(p == y) for p, y in zip(preds, labels)) / len(labels)
    tp = sum(int(p == 1 and y == 1) for p, y in zip(preds, labels))
    fp = sum(int(p == 1 and y == 0) for p, y in zip(preds, labels))
    fn = sum(int(p == 0 and y == 1) for p, y in zip(preds, labels))
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return {"accuracy": acc, "f1": f1}


def finetune_mode(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    sync = synchronizer(device)
    t_start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model)
    train = read_tsv(os.path.join(a.data, a.task, "train.tsv"), a.task)
    dev = read_tsv(os.path.join(a.data, a.task, "dev.tsv"), a.task)
    ids, types, labels = encode(tok, train, a.max_len)
    dev_ids, dev_types, dev_labels = encode(tok, dev, a.max_len)
    encoder = AutoModel.from_pretrained(a.model)
    if a.write_batch_order:
        # A replay must start from the same head: seeded right before it is drawn, as clsnorm
        # draws it (nn.Linear's order, --classifier-init torch).
        torch.manual_seed(a.seed)
    model = Classifier(encoder, len(TASKS[a.task][3]), norm=a.norm, init=a.classifier_init).to(device)
    steps_per_epoch = len(ids) // a.batch_size if a.drop_last else math.ceil(len(ids) / a.batch_size)
    total_steps = a.epochs * steps_per_epoch
    if a.max_steps:
        # As clsnorm's --max-steps: the schedule spans the steps that run.
        total_steps = min(total_steps, a.max_steps)
    opt, sched = optimizer_and_schedule(
        model, a.lr, total_steps, rounding=a.warmup_rounding, fused=a.fused_adamw
    )
    loss_fn = nn.CrossEntropyLoss()
    prec = Precision(a.precision, device)
    label_t = torch.tensor(labels)
    gen = torch.Generator().manual_seed(a.seed)
    t_setup = time.perf_counter() - t_start
    train_secs, tokens, padded, loss_sum, steps_run = 0.0, 0, 0, 0.0, 0

    all_preds = []

    def evaluate():
        model.eval()
        preds = []
        with torch.no_grad():
            for b in range(0, len(dev_ids), a.eval_batch_size):
                idx = list(range(b, min(len(dev_ids), b + a.eval_batch_size)))
                x, tt, m = collate(dev_ids, dev_types, idx, tok.pad_token_id)
                with prec.autocast():
                    logits = model(x.to(device), tt.to(device), m.to(device))
                preds += logits.float().argmax(-1).tolist()
        all_preds.append(preds)
        return dev_metrics(dev_labels, preds)

    # Seconds by phase, as clsnorm's metrics.jsonl `train_phase_secs` (on a GPU, kernels land
    # in the phase that waits for them).
    phase_secs = {"collate": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def lap(phase, since):
        now = time.perf_counter()
        phase_secs[phase] += now - since
        return now

    per_epoch = []
    epoch_losses = []
    eval_secs = 0.0
    order_out = open(a.write_batch_order, "w") if a.write_batch_order else None
    for epoch in range(a.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(ids), generator=gen).tolist()
        epoch_loss, done = 0.0, 0
        for b in range(steps_per_epoch):
            if a.max_steps and steps_run >= a.max_steps:
                break
            idx = order[b * a.batch_size:(b + 1) * a.batch_size]
            if order_out:
                order_out.write(json.dumps({"epoch": epoch, "batch": idx}) + "\n")
            t_phase = time.perf_counter()
            x, tt, m = collate(ids, types, idx, tok.pad_token_id)
            tokens += int(m.sum())
            padded += m.numel()
            x, tt, m = x.to(device), tt.to(device), m.to(device)
            y = label_t[idx].to(device)
            t_phase = lap("collate", t_phase)
            with prec.autocast():
                loss = loss_fn(model(x, tt, m), y)
            t_phase = lap("forward", t_phase)
            prec.backward(loss)
            t_phase = lap("backward", t_phase)
            prec.step(opt)
            sched.step()
            opt.zero_grad(set_to_none=True)
            lap("optimizer", t_phase)
            loss_sum += loss.item()
            epoch_loss += loss.item()
            done += 1
            steps_run += 1
        epoch_losses.append(epoch_loss / max(done, 1))
        sync()
        train_secs += time.perf_counter() - t0
        if a.eval_every_epoch:
            t0 = time.perf_counter()
            per_epoch.append(evaluate())
            eval_secs += time.perf_counter() - t0
    if order_out:
        order_out.close()
    t0 = time.perf_counter()
    final = per_epoch[-1] if per_epoch else evaluate()
    if a.write_dev_predictions:
        with open(a.write_dev_predictions, "w") as f:
            for e, p in enumerate(all_preds):
                f.write(json.dumps({"epoch": e, "predictions": p}) + "\n")
    eval_secs += time.perf_counter() - t0
    dev_tokens = sum(len(x) for x in dev_ids)
    print(json.dumps({
        "side": "reference", "task": a.task, "epochs": a.epochs, "seed": a.seed,
        "threads": a.threads, "device": a.device, "setup_secs": t_setup, "train_secs": train_secs,
        "train_tokens": tokens, "train_padded_tokens": padded, "train_phase_secs": phase_secs,
        "train_loss": loss_sum / max(steps_run, 1), "steps": steps_run,
        "eval_secs": eval_secs, "dev_tokens": dev_tokens,
        "dev": final,
        "dev_per_epoch": per_epoch,
        "train_loss_per_epoch": epoch_losses,
        "best_accuracy": max((e["accuracy"] for e in per_epoch), default=final["accuracy"]),
        "protocol": {
            "norm": a.norm, "drop_last": a.drop_last, "warmup_rounding": a.warmup_rounding,
            "classifier_init": a.classifier_init, "fused_adamw": a.fused_adamw,
            "precision": a.precision,
        },
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("step")
    s.add_argument("--model", default="models/all-MiniLM-L6-v2")
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--seq", type=int, default=64)
    s.add_argument("--reps", type=int, default=5)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--device", default="cpu")
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    s.add_argument("--fused-adamw", action="store_true", help="torch.optim.AdamW(fused=True)")
    f = sub.add_parser("finetune")
    f.add_argument("--model", default="models/all-MiniLM-L6-v2")
    f.add_argument("--task", required=True, choices=sorted(TASKS))
    f.add_argument("--data", required=True)
    f.add_argument("--epochs", type=int, default=1)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--eval-batch-size", type=int, default=64)
    f.add_argument("--lr", type=float, default=5e-5)
    f.add_argument("--max-len", type=int, default=128)
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--device", default="cpu")
    f.add_argument("--norm", default="none", choices=["none", "isobn"])
    f.add_argument("--max-steps", type=int, help="stop after this many updates (the schedule spans them, as clsnorm's --max-steps)")
    f.add_argument("--drop-last", action="store_true", help="skip each epoch's partial batch")
    f.add_argument("--warmup-rounding", default="ceil", choices=["ceil", "floor"])
    f.add_argument("--classifier-init", default="hf", choices=["hf", "torch"])
    f.add_argument("--fused-adamw", action="store_true", help="torch.optim.AdamW(fused=True)")
    f.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    f.add_argument("--eval-every-epoch", action="store_true", help="dev metrics after each epoch")
    f.add_argument("--write-batch-order", help="write every batch's example indices (JSON lines) for clsnorm --batch-order; seeds the head right before it is drawn")
    f.add_argument("--write-dev-predictions", help="write the dev predictions of each evaluation (JSON lines)")
    a = p.parse_args()
    step_mode(a) if a.mode == "step" else finetune_mode(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
