"""Train the Fashion-MNIST classifier that scores class-conditional samples (a maintainer tool).

    python tools/train_fashion_classifier.py --out data/checkpoints/fashion_mnist_classifier

Trains :class:`ldm_mini.classifier.ImageClassifier` on the bundled training split (the 32x32
grey images in [-1, 1] that the LDMs see), with random shifts (pad 2, crop) and horizontal
flips, AdamW and a one-cycle learning rate; then measures it on the whole bundled test split
and writes the checkpoint (float16 weights) with the measured accuracy in its config. The card
(README.md beside it) is written by hand from what this prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from ldm_mini.classifier import ClassifierConfig, ImageClassifier, class_accuracy, save_classifier
from ldm_mini.data.config import DataConfig, build_dataset


def images_and_labels(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a bundled Fashion-MNIST split as the LDMs see it, and its label."""
    dataset = build_dataset(DataConfig(dataset="fashion_mnist", split=split, image_size=32))
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([i["image"] for i in items]), torch.tensor([int(i["label"]) for i in items])


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (pad with the background, crop) and horizontal flips."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2, batch), generator=generator)
    shifted = torch.stack(
        [padded[i, :, dy[i] : dy[i] + height, dx[i] : dx[i] + width] for i in range(batch)]
    )
    flip = torch.rand(batch, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], shifted.flip(-1), shifted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    train_x, train_y = images_and_labels("train")
    test_x, test_y = images_and_labels("test")
    print(f"train {tuple(train_x.shape)}, test {tuple(test_x.shape)}", flush=True)
    model = ImageClassifier(ClassifierConfig(widths=tuple(args.widths)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps_per_epoch = len(train_x) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.epochs * steps_per_epoch
    )
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        total = 0.0
        for index in range(steps_per_epoch):
            chosen = order[index * args.batch_size : (index + 1) * args.batch_size]
            logits = model(augment(train_x[chosen], generator))
            loss = F.cross_entropy(logits, train_y[chosen], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        test = class_accuracy(model, test_x, test_y)
        print(
            f"epoch {epoch + 1}: loss {total / steps_per_epoch:.4f}, test accuracy "
            f"{test['accuracy']:.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    train = class_accuracy(model, train_x, train_y)
    record = {
        "test_accuracy": test["accuracy"],
        "test_per_class": test["per_class"],
        "test_images": test["n"],
        "train_accuracy": train["accuracy"],
        "train_images": train["n"],
        "epochs": args.epochs,
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "command": "python tools/train_fashion_classifier.py " + " ".join(sys.argv[1:]),
    }
    save_classifier(model, args.out, {"data": {"dataset": "fashion_mnist", "image_size": 32},
                                      "measured": record})
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
