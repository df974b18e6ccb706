"""The ``lungs`` command: ``lungs train`` fits a U-Net lung segmenter on image/mask pairs;
``lungs predict`` writes lung masks for image files. Parses options and calls
:mod:`covidxr.lungs`, nothing else."""

from __future__ import annotations

__all__ = ["add_lungs", "run_lungs"]


def add_lungs(sub):
    p = sub.add_parser("lungs", help="train a lung segmenter (U-Net) on image/mask pairs, or segment images")
    actions = p.add_subparsers(dest="lungs_action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="train a U-Net on image/mask pairs, split by group; Dice and IoU on "
                                         "held-out masks; writes OUT/lungs-<timestamp>/")
    t.add_argument("--data-dir", default=None, help="the dataset (any layout; every view and label is used)")
    t.add_argument("--layout", default="auto", help="the dataset's layout (default: auto)")
    t.add_argument("--masks", default=None, metavar="DIR",
                   help="folder of <image stem>_mask.png files (the collection's annotations/lungVAE-masks); "
                        "default: the layout's own masks (COVID-QU-Ex)")
    t.add_argument("--out", default="runs/lungs", help="parent folder of the new segmenter folder")
    t.add_argument("--image-size", type=int, default=256, help="input side, divisible by 2**depth (default: 256)")
    t.add_argument("--filters", type=int, default=8, help="filters of the first level (default: 8)")
    t.add_argument("--depth", type=int, default=4, help="down-sampling steps (default: 4)")
    t.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    t.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    t.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's rate, cosine-decayed (default: 0.001)")
    t.add_argument("--test-size", type=float, default=0.2, help="share of groups held out for Dice/IoU (default: 0.2)")
    t.add_argument("--seed", type=int, default=0, help="split and training seed (default: 0)")
    t.add_argument("--cache-dir", default=None, help="cache folder (the hash index behind the split groups)")
    q = actions.add_parser("predict", help="write <stem>_mask.png lung masks for image files")
    q.add_argument("images", nargs="+", help="image files (PNG, JPEG, DICOM ...)")
    q.add_argument("--out", required=True, help="new or empty folder for the masks (and masks.csv)")
    q.add_argument("--show", default="crop", choices=["crop", "mask"],
                   help="what lung_crops.png shows beside each image and its mask (default: crop)")
    q.add_argument("--segmenter", default=None,
                   help="segmenter file or `lungs train` folder (default: the bundled one, checked by sha256)")


def run_lungs(args):
    from ..lungs import predict_lungs, train_lungs

    if args.lungs_action == "train":
        folder = train_lungs(data_dir=args.data_dir, masks=args.masks, out=args.out, image_size=args.image_size,
                             filters=args.filters, depth=args.depth, epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, test_size=args.test_size, seed=args.seed,
                             cache_dir=args.cache_dir, layout=args.layout)
        print((folder / "README.md").read_text().strip())
        print(f"segmenter written to {folder}")
        return 0
    table = predict_lungs(args.images, out=args.out, segmenter=args.segmenter, lungs=args.show)
    for row in table.itertuples():
        print(f"{row.image}: lungs cover {row.lung_share:.1%} -> {row.mask}")
    print(f"{len(table)} mask(s) written to {args.out}")
    return 0
