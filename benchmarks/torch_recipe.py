"""The common PyTorch recipe for dataset mean/std, as forum answers give it.

A DataLoader over an ImageFolder-like dataset with ``ToTensor()``; the main
process sums per-channel values and squares. Worker processes ship float32
tensors (4 bytes per value) back to it. Used by ``bench_compute.py`` in its
own process and as a script:

    python benchmarks/torch_recipe.py FILE_LIST WORKERS
"""

import sys

import numpy as np
from PIL import Image


def torch_recipe(files, workers):
    """The forum recipe: DataLoader + ToTensor, per-channel sum and sum of squares."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    try:
        from torchvision.transforms import ToTensor
        to_tensor = ToTensor()
    except Exception:  # torchvision missing or broken: the same steps by hand
        def to_tensor(img):
            a = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous()
            return a.to(torch.float32).div(255)

    class ImageFiles(Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return to_tensor(Image.open(files[i]).convert("RGB"))

    loader = DataLoader(ImageFiles(), batch_size=32, num_workers=workers, collate_fn=list)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    n = 0
    for batch in loader:  # sizes differ, so images come as a list, not a stacked batch
        for t in batch:
            t = t.double()
            total += t.sum(dim=(1, 2))
            total_sq += (t * t).sum(dim=(1, 2))
            n += t.shape[1] * t.shape[2]
    mean = total / n
    return mean, (total_sq / n - mean * mean).sqrt()


if __name__ == "__main__":
    listing, workers = sys.argv[1], int(sys.argv[2])
    with open(listing) as f:
        mean, std = torch_recipe(f.read().splitlines(), workers)
    print(mean.tolist(), std.tolist())
