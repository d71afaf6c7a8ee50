"""MXNet 1.9.1 reference trainer for bench/train.py — runs inside bench/.mxnet-venv, never imported by openic.

Trains SageMaker's network (pre-activation ResNet v2 with an input BatchNorm, as in MXNet's
example/image-classification/symbols/resnet.py, rebuilt here from the architecture facts in
shared/fixtures/mxnet_models/README.md) with ``mx.io.ImageRecordIter`` and ``mx.mod.Module``, the way SageMaker's
MXNet container does, and prints one JSON line per epoch: train accuracy, validation accuracy, time, samples/s.
Like SageMaker, it saves the model (symbol + params) whenever validation accuracy improves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import mxnet as mx


def _bn(x, name, fix_gamma=False):
    return mx.sym.BatchNorm(data=x, fix_gamma=fix_gamma, eps=2e-5, momentum=0.9, name=name)


def _conv(x, filters, kernel, stride, name):
    pad = (kernel // 2, kernel // 2)
    return mx.sym.Convolution(
        data=x, num_filter=filters, kernel=(kernel, kernel), stride=(stride, stride), pad=pad, no_bias=True, name=name
    )


def _unit(x, filters, stride, first, name, bottleneck):
    a1 = mx.sym.Activation(_bn(x, name + "_bn1"), act_type="relu")
    if bottleneck:
        r = _conv(a1, filters // 4, 1, 1, name + "_conv1")
        r = _conv(mx.sym.Activation(_bn(r, name + "_bn2"), act_type="relu"), filters // 4, 3, stride, name + "_conv2")
        r = _conv(mx.sym.Activation(_bn(r, name + "_bn3"), act_type="relu"), filters, 1, 1, name + "_conv3")
    else:
        r = _conv(a1, filters, 3, stride, name + "_conv1")
        r = _conv(mx.sym.Activation(_bn(r, name + "_bn2"), act_type="relu"), filters, 3, 1, name + "_conv2")
    shortcut = _conv(a1, filters, 1, stride, name + "_sc") if first else x
    return r + shortcut


TABLE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3],
         200: [3, 24, 36, 3]}


def build_symbol(num_layers: int, num_classes: int, image_shape: tuple[int, int, int]):
    """SageMaker's layout choice: 3 stages for depths 20..110, 4 stages for the ImageNet depths."""
    _, height, _ = image_shape
    if num_layers in TABLE:
        units, bottleneck = TABLE[num_layers], num_layers >= 50
        widths = [64, 256, 512, 1024, 2048] if bottleneck else [64, 64, 128, 256, 512]
    else:
        units, bottleneck, widths = [(num_layers - 2) // 6] * 3, False, [16, 16, 32, 64]
    x = mx.sym.identity(mx.sym.Variable("data"), name="id")
    x = _bn(x, "bn_data", fix_gamma=True)
    if height <= 32:
        x = _conv(x, widths[0], 3, 1, "conv0")
    else:
        x = _conv(x, widths[0], 7, 2, "conv0")
        x = mx.sym.Activation(_bn(x, "bn0"), act_type="relu")
        x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max")
    for s, n in enumerate(units):
        for u in range(n):
            stride = 2 if (s > 0 and u == 0) else 1
            x = _unit(x, widths[s + 1], stride, u == 0, f"stage{s + 1}_unit{u + 1}", bottleneck)
    x = mx.sym.Activation(_bn(x, "bn1"), act_type="relu")
    x = mx.sym.Pooling(x, global_pool=True, kernel=(7, 7), pool_type="avg")
    x = mx.sym.FullyConnected(mx.sym.Flatten(x), num_hidden=num_classes, name="fc1")
    return mx.sym.SoftmaxOutput(x, name="softmax")


def _validation_accuracy(mod, val) -> float:
    """Accuracy over exactly the validation images (padding of the last batch excluded)."""
    val.reset()
    hits = total = 0
    for batch in val:
        mod.forward(batch, is_train=False)
        n = batch.data[0].shape[0] - batch.pad
        pred = mod.get_outputs()[0].asnumpy().argmax(axis=1)[:n]
        hits += int((pred == batch.label[0].asnumpy()[:n]).sum())
        total += n
    return hits / total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--num-layers", type=int, default=18)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-shape", default="3,28,28")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-training-samples", type=int, required=True)
    p.add_argument("--lr-steps", default="")
    p.add_argument("--lr-factor", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="folder for the best model's checkpoint, as SageMaker writes it")
    args = p.parse_args()
    mx.random.seed(args.seed)
    shape = tuple(int(v) for v in args.image_shape.split(","))
    common = dict(data_shape=shape, batch_size=args.batch_size, preprocess_threads=args.threads)
    train = mx.io.ImageRecordIter(
        path_imgrec=args.train, shuffle=True, rand_crop=True, rand_mirror=True, seed=args.seed, **common
    )
    val = mx.io.ImageRecordIter(
        path_imgrec=args.validation, shuffle=False, rand_crop=False, rand_mirror=False, round_batch=False, **common
    )
    epoch_size = max(1, -(-args.num_training_samples // args.batch_size))
    steps = [int(s) * epoch_size for s in args.lr_steps.split(",") if s.strip()]
    scheduler = mx.lr_scheduler.MultiFactorScheduler(step=steps, factor=args.lr_factor) if steps else None
    mod = mx.mod.Module(build_symbol(args.num_layers, args.num_classes, shape), context=mx.cpu())
    mod.bind(data_shapes=train.provide_data, label_shapes=train.provide_label)
    mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    opt = {"learning_rate": args.lr, "momentum": args.momentum, "wd": args.wd, "rescale_grad": 1.0 / args.batch_size}
    if scheduler is not None:
        opt["lr_scheduler"] = scheduler
    mod.init_optimizer(optimizer="sgd", optimizer_params=opt)
    metric = mx.metric.Accuracy()
    best = -1.0
    for epoch in range(args.epochs):
        train.reset()
        metric.reset()
        tic = time.perf_counter()
        samples = 0
        for batch in train:
            mod.forward_backward(batch)
            mod.update()
            mod.update_metric(metric, batch.label)
            samples += args.batch_size - batch.pad
        mx.nd.waitall()
        elapsed = time.perf_counter() - tic
        train_acc = metric.get()[1]
        val_acc = _validation_accuracy(mod, val)
        if args.out and val_acc > best:  # SageMaker stores the best model each time it improves
            best = val_acc
            mod.save_checkpoint(f"{args.out}/image-classification", epoch + 1)
        print(
            json.dumps(
                {
                    "epoch": epoch,
                    "train_accuracy": train_acc,
                    "validation_accuracy": val_acc,
                    "epoch_time": elapsed,
                    "samples_per_sec": samples / elapsed,
                }
            ),
            flush=True,
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
