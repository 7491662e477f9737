"""What shuffling shard by shard (`--shuffle shards`) does to accuracy, on scikit-learn's digits (1797 real 8x8
scans, 10 classes), measured side by side in one run: the tiny ResNeXt trained on

- the folder, every image shuffled (`--shuffle images`, DistributedSampler's order): the reference;
- WebDataset shards written in a shuffled order (`prepare --shuffle`), read shard by shard (`--shuffle shards`);
- the same with shards written in the folder's order, class by class (what `--shuffle shards` must not meet);

each with several seeds, and prints a markdown table of the validation Acc@1 (mean, and the lowest and highest).
Usage: python tools/shuffle_study.py [--epochs 8] [--seeds 3] [--shard-size 64] [--batch-size 32]"""
import argparse, contextlib, io, logging, statistics, tempfile, time
from pathlib import Path
import torch
from PIL import Image
from resnext_nb.data import DataConfig
from resnext_nb.prepare import prepare
from resnext_nb.train import RunConfig, TrainConfig, train


def write_digits(root:Path, val_share:float=0.2) -> Path:
    "Every digits scan as a 16-pixel PNG in root/{train,val}/<digit>/: the last `val_share` of each class is val."
    from sklearn.datasets import load_digits
    digits = load_digits()
    for label in range(10):
        scans = digits.images[digits.target == label]
        n_val = round(len(scans) * val_share)
        for k, image in enumerate(scans):
            folder = root / ('val' if k >= len(scans) - n_val else 'train') / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = Image.fromarray((image * 255 / 16).astype('uint8')).resize((16, 16), Image.Resampling.NEAREST)
            pixels.convert('RGB').save(folder / f'{k:03d}.png')
    return root


def run(data:Path, out:Path, shuffle:str, seed:int, args) -> float:
    "Train the tiny model on `data`; the last epoch's validation Acc@1."
    cfg = RunConfig(train=TrainConfig(arch='resnext_tiny', epochs=args.epochs, lr=args.lr, seed=seed,
                                      print_freq=10_000, output=str(out)),
                    data=DataConfig(data_path=str(data), image_size=16, batch_size=args.batch_size, workers=0,
                                    hflip=0.0, shuffle=shuffle))
    with contextlib.redirect_stdout(io.StringIO()): return train(cfg)['val_acc1']  # the table alone


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--epochs', type=int, default=8); p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--shard-size', type=int, default=64); p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=0.05)
    args = p.parse_args()
    torch.set_num_threads(1); logging.disable(logging.WARNING)
    work = Path(tempfile.mkdtemp())
    folder = write_digits(work / 'folder')
    for name, mix in (('mixed', True), ('sorted', False)):
        prepare(folder, work / name, 'wds', shard_size=args.shard_size, progress=False, shuffle=mix)
    cases = [('folder, every image shuffled', folder, 'images'),
             ('shards written shuffled, read shard by shard', work / 'mixed', 'shards'),
             ('shards written class by class, read shard by shard', work / 'sorted', 'shards')]
    print(f"digits: {sum(1 for _ in (folder / 'train').rglob('*.png'))} train and "
          f"{sum(1 for _ in (folder / 'val').rglob('*.png'))} val images; shards of {args.shard_size}; "
          f"resnext_tiny, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, seeds 0..{args.seeds - 1}\n")
    print('| train order | val Acc@1, mean | lowest | highest | × the folder |\n|---|---|---|---|---|')
    reference, start = None, time.time()
    for title, data, shuffle in cases:
        accs = [run(data, work / 'runs' / f'{data.name}-{seed}', shuffle, seed, args) for seed in range(args.seeds)]
        mean = statistics.mean(accs); reference = reference or mean
        print(f"| {title} | {mean:.1f} % | {min(accs):.1f} % | {max(accs):.1f} % | {mean / reference:.3f} |", flush=True)
    print(f"\n{len(cases) * args.seeds} runs in {time.time() - start:.0f} s")


if __name__ == '__main__': main()
