"""Loader throughput of the ImageFolder path (decode + transform + collate), in images per second.

Measures `resnext_nb.data.build_loaders` at 224 px for several worker counts in one run, train (RandomResizedCrop
+ flip) and val (Resize + CenterCrop), and prints them side by side (the median of a few passes each). Without `--data_path` it first writes
ImageNet-like JPEGs (500x375 px, quality 90, photo-like noise) into a temporary folder; nothing is downloaded.

usage:
    python scripts/bench_loader.py                                   # 0, 1 and 2 workers on generated JPEGs
    python scripts/bench_loader.py --workers 1 2 --batches 20
    python scripts/bench_loader.py --data_path /data/imagenet --workers 0 4 8 16 --batch-size 256
"""
import argparse, os, platform, random, statistics, sys, tempfile, time
from pathlib import Path
import torch
from PIL import Image
from resnext_nb.data import SHAPE_CLASSES, DataConfig, build_loaders, draw_shape, read_image


def write_imagenet_like(root:Path, n_train:int, n_val:int, size=(500, 375)) -> Path:
    "Write JPEGs shaped like ImageNet's (500x375, quality 90) in the ImageFolder layout, deterministically."
    for split, n in (('train', n_train), ('val', n_val)):
        for cls in SHAPE_CLASSES:
            (root/split/cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = random.Random(f'bench/{split}/{cls}/{i}')
                img = draw_shape(cls, rng, size=max(size)).crop((0, 0, *size))
                noise = Image.frombytes('RGB', size, rng.randbytes(size[0] * size[1] * 3))
                Image.blend(img, noise, 0.12).save(root/split/cls/f'{cls}_{i:04d}.jpg', quality=90)
    return root


def images_per_second(loader, max_batches:int, rounds:int) -> float:
    "Median over `rounds` passes of images per second in up to `max_batches` batches, after one warm-up batch each."
    rates = []
    for _ in range(rounds):
        it = iter(loader)
        next(it)  # worker start-up and the first prefetch are not throughput
        n, t0 = 0, time.perf_counter()
        for _, (_, labels) in zip(range(max_batches), it): n += len(labels)
        rates.append(n / (time.perf_counter() - t0))
        del it
    return statistics.median(rates)


def decode_only(root:Path, n:int) -> float:
    "Images per second for `read_image` alone, in this process."
    files = sorted(root.glob('train/*/*'))[:n]
    t0 = time.perf_counter()
    for f in files: read_image(f)
    return len(files) / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data_path', help='an ImageFolder root to read (default: generate ImageNet-like JPEGs)')
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='loader processes to compare')
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--batches', type=int, default=20, help='timed batches per pass (after one warm-up batch)')
    p.add_argument('--rounds', type=int, default=3, help='passes per measurement; the median is reported')
    p.add_argument('--per-class', type=int, default=70, help='generated train images per class (val gets as many)')
    args = p.parse_args(argv)

    tmp = None
    if args.data_path: root = Path(args.data_path)
    else:
        tmp = tempfile.TemporaryDirectory(prefix='bench_loader_')
        t0 = time.perf_counter()
        root = write_imagenet_like(Path(tmp.name), args.per_class, args.per_class)
        print(f"wrote {2 * len(SHAPE_CLASSES) * args.per_class} ImageNet-like JPEGs in {time.perf_counter() - t0:.0f} s")
    files = list(root.glob('train/*/*'))[:500]
    kib = sum(f.stat().st_size for f in files) / len(files) / 1024
    with Image.open(files[0]) as im: shape = im.size
    print(f"ImageFolder loader at {args.image_size} px, batch {args.batch_size}, on {root} (e.g. {shape[0]}x{shape[1]} px, mean {kib:.0f} KiB)")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"decode only (PIL, main process): {decode_only(root, 4 * args.batch_size):.0f} img/s")
    print(f"\n| workers | train img/s | val img/s | train vs {args.workers[0]} workers |\n|---|---|---|---|")
    base = None
    for w in args.workers:
        cfg = DataConfig(data_path=str(root), image_size=args.image_size, batch_size=args.batch_size, workers=w,
                         persistent_workers=False, pin_memory=False)
        loaders = build_loaders(cfg)
        train = images_per_second(loaders.train, args.batches, args.rounds)
        val = images_per_second(loaders.val, args.batches, args.rounds)
        base = base or train
        print(f"| {w} | {train:.0f} | {val:.0f} | {train / base:.2f}x |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f} (other processes running at the same time slow these figures)")
    if tmp: tmp.cleanup()


if __name__ == '__main__':
    sys.exit(main())
