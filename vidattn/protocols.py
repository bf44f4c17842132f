"""The papers' training and evaluation protocols as presets of ``train-head --protocol``.

Every value carries its source: the paper's words (section / line of the text in
``shared/papers``), or "not stated" and the choice vidattn makes instead.  A preset sets
TrainConfig fields (crop, batch, epochs, lr, weight decay, conjugates, selection hold-out),
head options (loss weights, ActX's rho/alpha/beta), and states what the store should have
been extracted with and which metric the paper reports; the run directory records the
preset, every value it set and every flag that overrode one.

Optimiser: vidattn trains with AdamW at a constant rate.  ActX does not state its optimiser
or rate; RefAtomNet's summary names BertAdam (Adam with decoupled weight decay and, in its
released library, an optional warmup schedule the summary does not mention), which AdamW
at the same rate stands in for.  W3 gives no protocol for heads on frozen I3D maps (its
results train TSM / I3D-R18 end to end), so there is no W3 preset; its MFR term is eq. 9
with unit weight, as the paper adds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NOT_STATED = "not stated in the paper; vidattn's default"


@dataclass(frozen=True)
class Setting:
    """One value and where it comes from."""

    value: object
    source: str


@dataclass(frozen=True)
class Protocol:
    """A paper's setting for one head on one dataset.

    train: TrainConfig field -> Setting; options: head Config field -> Setting; extract:
    what the store's maps should be (fps, short_side, crop) -> Setting; metric, selection:
    what is reported and how the checkpoint is chosen; reported: the paper's numbers to
    compare with (table -> method -> value); cannot_match: why a number may differ.
    """

    name: str
    head: str
    dataset: str
    paper: str
    train: dict[str, Setting]
    options: dict[str, Setting] = field(default_factory=dict)
    extract: dict[str, Setting] = field(default_factory=dict)
    metric: Setting = Setting("mAP", NOT_STATED)
    selection: Setting = Setting("", "")
    reported: dict[str, dict[str, float]] = field(default_factory=dict)
    cannot_match: tuple[str, ...] = ()

    def values(self) -> dict:
        """Plain values, as recorded in a run directory."""
        return {"train": {k: s.value for k, s in self.train.items()},
                "options": {k: s.value for k, s in self.options.items()},
                "extract": {k: s.value for k, s in self.extract.items()},
                "metric": self.metric.value, "selection": self.selection.value}


ACTX = "ActX (Wang et al., BMVC 2019), shared/papers/000"
_ADAMW = {
    "epochs": Setting(40, NOT_STATED),
    "lr": Setting(1e-3, NOT_STATED + " (AdamW, constant rate)"),
    "weight_decay": Setting(1e-4, NOT_STATED),
}
_ACTX_OPTIONS = {
    "rho": Setting(30.0, "Sec 3.4: rho = 30 'a good default starting point'"),
    "alpha": Setting(1.0, "Sec 3.4: alpha = beta = 1"),
    "beta": Setting(1.0, "Sec 3.4: alpha = beta = 1"),
    "lambda_s": Setting(1.0, "Sec 3: the loss is the plain sum L_c + L_d + L_s"),
    "lambda_d": Setting(1.0, "Sec 3: the loss is the plain sum L_c + L_d + L_s"),
}
# Sec 4.1: ActionThread maps are T x 8 x 11 x 1024, i.e. full frames (no square crop); the
# short side is not stated: 256, as I3D's preprocessing, gives 8 x 11 on 4:3 footage.
_FULL_FRAMES = {
    "fps": Setting(25.0, "implied: 80 frames = 3.2 s (Sec 4.1)"),
    "short_side": Setting(256, "not stated; I3D's 256 gives the paper's 8 x 11 maps"),
    "crop": Setting("full", "Sec 4.1: T x 8 x 11 x 1024 maps, so full frames"),
}
_HOLDOUT = Setting(0.25, "not stated (the paper defines no validation split); vidattn holds "
                         "out 25% of train, stratified, to choose the epoch")

PROTOCOLS: dict[str, Protocol] = {
    "actx-hollywood2": Protocol(
        name="actx-hollywood2", head="actx", dataset="hollywood2", paper=ACTX,
        train={
            "crop_t": Setting(6, "Sec 4.2 L174: 'temporal cropping length ... set to 6'"),
            "batch_size": Setting(36, "Sec 4.2 L174: 'a batch size of 36 videos'"),
            "conjugates": Setting("around", "Sec 4.2 L174: 'the sequences right before and "
                                            "after the temporally cropped action samples'"),
            "val_fraction": _HOLDOUT, **_ADAMW,
        },
        options=_ACTX_OPTIONS, extract=_FULL_FRAMES,
        metric=Setting("mAP over the 12 actions (per-class AP)", "Table 2"),
        selection=Setting("train-holdout", _HOLDOUT.source),
        reported={"Table 2, RGB": {"I3D (average pooling)": 55.3, "ACF": 61.3, "ActX": 62.5},
                  "Table 2, RGB+Flow": {"I3D (average pooling)": 62.8, "ACF": 71.2,
                                        "ActX": 73.2}},
        cannot_match=("optimiser, rate, epochs and selection are not stated",
                      "the flow stream has no packaged weights (RGB+Flow needs --i3d-flow)")),
    "actx-actionthread": Protocol(
        name="actx-actionthread", head="actx", dataset="actionthread", paper=ACTX,
        train={
            "crop_t": Setting(10, "Sec 4.1 L141: 'the temporal cropping length is set to 10'"),
            "batch_size": Setting(36, "Sec 4.1 L141: 'a batch size of 36 videos'"),
            "conjugates": Setting("pairs", "Sec 4.1: the pre- and post-action sequences of "
                                           "the same video thread (pairs.parquet)"),
            "val_fraction": _HOLDOUT, **_ADAMW,
        },
        options=_ACTX_OPTIONS, extract=_FULL_FRAMES,
        metric=Setting("mAP over the 13 actions", "Table 1"),
        selection=Setting("train-holdout", _HOLDOUT.source),
        reported={"Table 1, RGB": {"I3D (average pooling)": 46.7, "Attentional pooling": 53.0,
                                   "ACF": 52.9, "ActX": 55.4},
                  "Table 1, RGB+Flow": {"I3D (average pooling)": 55.9, "ACF": 60.4,
                                        "ActX": 63.1}},
        cannot_match=("optimiser, rate, epochs and selection are not stated",)),
    "actx-hacs30": Protocol(
        name="actx-hacs30", head="actx", dataset="hacs30", paper=ACTX,
        train={
            "crop_t": Setting(6, "not stated; HACS clips are 2 s (Sec 4.3), 6 steps of 8 "
                                 "frames at 25 fps"),
            "batch_size": Setting(36, "not stated for HACS-30; 36 as on the other datasets"),
            "conjugates": Setting("pairs", "Sec 4.3 L190: three conjugates per positive, the "
                                           "top-3 nearest negatives (vidattn mine-conjugates)"),
            "val_fraction": Setting(0.25, "the paper reports the validation split (Sec 4.3), "
                                          "so the epoch is chosen on 25% of train held out"),
            **_ADAMW,
        },
        options=_ACTX_OPTIONS,
        extract={**_FULL_FRAMES,
                 "short_side": Setting(256, "not stated (I3D-Res34 maps); as the others")},
        metric=Setting("mAP and mean per-class accuracy over 31 classes (30 + background), "
                       "on val", "Table 3"),
        selection=Setting("train-holdout", "the reported split is val: never used to select"),
        reported={"Table 3 (mAP / mAcc)": {"I3D (average pooling) mAP": 57.8,
                                           "I3D (average pooling) mAcc": 83.1,
                                           "ActX mAP": 59.1, "ActX mAcc": 85.3}},
        cannot_match=("the paper's backbone is I3D-Res34-RGB, unavailable offline: vidattn "
                      "mines conjugates and trains on Kinetics I3D (Inception) maps",)),
    "refatomnet-refava": Protocol(
        name="refatomnet-refava", head="refatomnet", dataset="refava",
        paper="RefAtomNet (Peng et al., 2024), shared/papers/002 (a summary of the paper)",
        train={
            "lr": Setting(1e-4, "summary L42: 'BertAdam optimizer, lr=1e-4'"),
            "batch_size": Setting(128, "summary L42: 'batch=128'"),
            "epochs": Setting(40, "summary L42: '40 epochs'"),
            "weight_decay": Setting(1e-4, NOT_STATED + " (BertAdam's own default is 0.01)"),
            "val_fraction": Setting(0.25, "unused: RefAVA has its own val split"),
        },
        options={"box_weight": Setting(5.0, "summary: L = L_BCE + 5 L_MSE (box)")},
        extract={"fps": Setting(25.0, "not stated (the paper's visual stream is a ViT)"),
                 "short_side": Setting(256, "not stated"),
                 "crop": Setting("full", "not stated; full frames keep the persons at the "
                                         "edges that boxes point to")},
        metric=Setting("mIoU, mAP and AUROC on test (raw scores; IoU-gated kept apart)",
                       "summary table"),
        selection=Setting("val", "not stated; RefAVA has a val split (10,916 rows)"),
        reported={"test (mIoU / mAP / AUROC)": {
            "I3D mIoU": 0.0, "I3D mAP": 44.64, "I3D AUROC": 62.71,
            "BLIPv2 mIoU": 32.75, "BLIPv2 mAP": 53.19, "BLIPv2 AUROC": 69.92,
            "RefAtomNet mIoU": 36.42, "RefAtomNet mAP": 57.52, "RefAtomNet AUROC": 73.95}},
        cannot_match=("the paper's visual and text streams are a ViT and BERT with QFormers, "
                      "trained (214M parameters); vidattn's are frozen I3D maps and MiniLM "
                      "tokens", "values come from a summary of the paper, not the paper")),
}


def get(name: str) -> Protocol:
    """The preset ``name``; ValueError listing the known ones."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
