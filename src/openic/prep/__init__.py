"""Tools that write data: im2rec, the digits and CIFAR-10 builders, resumable downloads."""
