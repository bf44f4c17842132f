"""A planted referring store: features written straight into a store, no video decoded.

The referring known-answer benchmark (``benchmarks/planted_ref.py``, ``tests/heads``) asks
whether a referring head finds the person a sentence names and that person's action when
it can be learnt, on thousands of rows.  Each *scene* has 2 or 3 persons side by side, one
per lane (left / right, or left / middle / right), each wearing a colour no other person of
the scene wears and doing one action of ``classes``; persons of a scene do different
actions (``SHARE`` of scenes repeat one, so the label never names the person).  Each person
is one row, as in RefAVA: the scene's map, a sentence naming the person by lane, colour or
both (never by action), and the detections (every person's box, sorted left to right, as
annotated boxes are stored).

The map (D, T, H, W) is sparse and non-negative like I3D Mixed_5c (about a fifth of the
values positive): a background of rectified noise, and in every cell a person's box covers,
by the covered fraction, the sum of three fixed sparse codes: "a person", the person's
colour and the person's action (scaled by a per-row amplitude).  The action signature of
a row's label therefore sits only in the referred person's box; the other persons' boxes
hold other actions.  Sentence tokens are fixed random word vectors (one per word, norm
about 7.7 like all-MiniLM-L6-v2's token states) plus a little noise; class-name embeddings
are fixed random unit vectors.

What a head can learn: the lane words pick a box among the detections (their order and
coordinates), the colour words pick the cells holding that colour's code; the action then
sits in those cells.  A sentence-blind head sees every person's action at once.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from vidattn.stores.schema import DETECTION_FIELDS, NO_OBJECT, PERSON

PLANTED_VERSION = 1  # bump when what is planted changes (it is the streams' provenance)
LANES = {2: ("left", "right"), 3: ("left", "middle", "right")}
WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
COLOURS = ("red", "green", "blue", "yellow", "white", "black")
TEMPLATES = {
    "position": ("the person {where}", "the one {where}", "the figure {where}"),
    "colour": ("the person in {colour}", "the one wearing {colour}", "the {colour} figure"),
    "both": ("the person {where} in {colour}", "the one {where} wearing {colour}",
             "the {colour} figure {where}"),
}
SHARE = 0.2  # P(a scene repeats one action): the label must not name the person
CODE_SIZE = 48  # active channels of each planted code
TEXT_DIM = 384
WORD_NORM = 7.7  # typical norm of an all-MiniLM-L6-v2 token state
N_QUERIES = 100  # detection slots, as DETR's queries


@dataclass(frozen=True)
class PlantedConfig:
    n_train: int = 1000  # scenes (each gives 2-3 rows)
    n_test: int = 300
    classes: tuple[str, ...] = ("wave", "walk", "jump", "clap")
    channels: int = 1024  # D, the rgb array's width
    steps: int = 2  # T
    height: int = 4  # H
    width: int = 6  # W: 2 cells a lane with 3 persons
    amplitude: float = 1.0  # of the action code, relative to the person and colour codes
    seed: int = 0

    def __post_init__(self):
        if min(self.n_train, self.n_test) < 1 or len(self.classes) < 2:
            raise ValueError("planted: need >= 1 scene a split and >= 2 classes")
        if min(self.steps, self.height, self.width) < 1 or self.amplitude <= 0:
            raise ValueError("planted: steps, height, width and amplitude must be positive")


def _codes(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n sparse non-negative codes (n, d): CODE_SIZE channels each, values around 2."""
    out = np.zeros((n, d), np.float32)
    for i in range(n):
        out[i, rng.choice(d, CODE_SIZE, replace=False)] = rng.uniform(1.5, 2.5, CODE_SIZE)
    return out


def _word(word: str, seed: int) -> np.ndarray:
    """A fixed random vector for ``word`` (same word, same vector, in any run)."""
    rng = np.random.default_rng([seed, zlib.crc32(word.encode())])
    v = rng.standard_normal(TEXT_DIM).astype(np.float32)
    return v * (WORD_NORM / np.linalg.norm(v))


def coverage(box, h: int, w: int) -> np.ndarray:
    """(h, w) fraction of each cell of a [0, 1]^2 grid that box [x1, y1, x2, y2] covers."""
    x1, y1, x2, y2 = box
    ex, ey = np.linspace(0, 1, w + 1), np.linspace(0, 1, h + 1)
    fx = np.clip(np.minimum(ex[1:], x2) - np.maximum(ex[:-1], x1), 0, None) * w
    fy = np.clip(np.minimum(ey[1:], y2) - np.maximum(ey[:-1], y1), 0, None) * h
    return (fy[:, None] * fx[None, :]).astype(np.float32)


def _scene(cfg: PlantedConfig, rng: np.random.Generator) -> list[dict]:
    """The persons of one scene: lane, colour, action, box, sentence words."""
    k = len(cfg.classes)
    n = int(rng.integers(2, 4))
    actions = rng.choice(k, n, replace=k < n)
    if rng.random() < SHARE:
        actions[1] = actions[0]
    colours = rng.choice(len(COLOURS), n, replace=False)
    persons = []
    for j, lane in enumerate(LANES[n]):
        lw = 1.0 / n
        bw = lw * rng.uniform(0.45, 0.8)
        x1 = j * lw + rng.uniform(0, lw - bw)
        bh = rng.uniform(0.4, 0.75)
        y1 = rng.uniform(0.05, 0.95 - bh)
        kind = ("position", "colour", "both")[rng.integers(3)]
        template = TEMPLATES[kind][rng.integers(3)]
        sentence = template.format(where=WHERE[lane], colour=COLOURS[colours[j]])
        persons.append({"lane": lane, "person_id": j, "colour": int(colours[j]),
                        "action": int(actions[j]), "box": [x1, y1, x1 + bw, y1 + bh],
                        "description": sentence, "kind": kind})
    return persons


def generate(cfg: PlantedConfig) -> dict:
    """Every row of both splits, in memory.

    Returns {"manifest": DataFrame (MANIFEST_SCHEMA columns), "maps": {video_id: (T, H, W,
    D) float32}, "text": {video_id: (1, 1, L, 384)}, "detections": {video_id: (1, 1, 100,
    10)}, "label_text": dict of LABEL_TEXT_SCHEMA columns, "rows": DataFrame (video_id,
    split, scene, n_persons, lane, kind, action, box) for baselines}.
    """
    rng = np.random.default_rng(cfg.seed)
    d, k = cfg.channels, len(cfg.classes)
    codes = _codes(rng, 1 + len(COLOURS) + k, d)
    person_code, colour_codes, action_codes = codes[0], codes[1:1 + len(COLOURS)], codes[-k:]
    out = {"maps": {}, "text": {}, "detections": {}}
    manifest, rows = [], []
    for split, n_scenes in (("train", cfg.n_train), ("test", cfg.n_test)):
        for s in range(n_scenes):
            srng = np.random.default_rng([cfg.seed, split == "test", s])
            persons = _scene(cfg, srng)
            noise = srng.standard_normal((cfg.steps, cfg.height, cfg.width, d))
            fmap = np.maximum(noise - 0.8, 0).astype(np.float32)  # ~21% positive
            for p in persons:
                amp = cfg.amplitude * srng.uniform(0.6, 1.4)
                code = person_code + colour_codes[p["colour"]] + amp * action_codes[p["action"]]
                fmap += coverage(p["box"], cfg.height, cfg.width)[None, :, :, None] * code
            dets = np.zeros((1, 1, N_QUERIES, len(DETECTION_FIELDS)), np.float32)
            dets[..., 8] = NO_OBJECT
            for q, p in enumerate(persons):  # already left to right
                x1, y1, x2, y2 = p["box"]
                dets[0, 0, q] = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1,
                                 x1, y1, x2, y2, PERSON, 1.0)
            scene_id = f"{split}_{s:05d}"
            for p in persons:
                vid = f"{scene_id}_p{p['person_id']}"
                words = ["[CLS]", *p["description"].split(), "[SEP]"]
                tokens = np.stack([_word(w, cfg.seed) for w in words])
                tokens += 0.3 * srng.standard_normal(tokens.shape).astype(np.float32)
                out["maps"][vid] = fmap
                out["text"][vid] = tokens[None, None]
                out["detections"][vid] = dets
                extra = {"description": p["description"], "person_id": p["person_id"],
                         "box": [float(v) for v in p["box"]],
                         "persons": [[float(v) for v in q["box"]] for q in persons]}
                manifest.append({
                    "video_id": vid, "path": f"planted/{scene_id}", "split": split,
                    "labels": [p["action"]], "role": "action", "group": scene_id,
                    "start_sec": None, "end_sec": None, "dataset": "planted-refer",
                    "fps": 25.0, "n_frames": 8 * cfg.steps, "status": "ok",
                    "extra": json.dumps(extra)})
                rows.append({"video_id": vid, "split": split, "scene": scene_id,
                             "n_persons": len(persons), "lane": p["lane"],
                             "kind": p["kind"], "action": p["action"], "box": p["box"]})
    man = pd.DataFrame(manifest)
    for col in ("start_sec", "end_sec"):
        man[col] = man[col].astype("float64")
    out["manifest"], out["rows"] = man, pd.DataFrame(rows)
    names = ["N/A"] * (NO_OBJECT + 1)
    names[PERSON], names[NO_OBJECT] = "person", "no object"
    emb = np.random.default_rng([cfg.seed, 7]).standard_normal((len(names), TEXT_DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out["label_text"] = {"class_id": list(range(len(names))), "name": names,
                         "embedding": [e.astype(np.float32) for e in emb]}
    return out


def write_store(url: str, cfg: PlantedConfig, part_size: int = 256) -> dict:
    """Plant ``cfg``'s rows into a new store at ``url`` (rgb, text, detections); returns
    generate()'s dict (its "rows" give the baselines their truth)."""
    from vidattn.stores import open_store

    data = generate(cfg)
    store = open_store(url, mode="a")
    base = {"extractor": "planted", "extractor_version": PLANTED_VERSION,
            "weights_sha256": None, "preprocessing": {"config": json.dumps(asdict(cfg))}}
    for stream in ("rgb", "text", "detections"):
        store.claim_stream(stream, base)
    store.set_classes(list(cfg.classes))
    man = store.merge_manifest(data["manifest"])
    store.write_table("label_text", data["label_text"])
    store.update_attrs({"dataset": {"name": "planted-refer", "root": ".", "multilabel": True,
                                    "conjugates": "none"}})
    plan = store.extend_plan(list(man.video_id), part_size)
    source = {"rgb": data["maps"], "text": data["text"], "detections": data["detections"]}
    for part, ids in plan.groupby("part").video_id:
        meta = [{"video_id": v, "status": "done", "error": None, "n_frames": 8 * cfg.steps,
                 "fps": 25.0} for v in ids]
        for stream, maps in source.items():
            store.write_part(stream, int(part), meta, {v: maps[v] for v in ids})
    return data


def lane_average_boxes(rows: pd.DataFrame) -> np.ndarray:
    """The box baseline: per test row (in ``rows``' test order), the mean box of the train
    rows whose person stands in the same lane of a scene with as many persons.

    rows: generate()'s "rows" table.  (N_test, 4) [x1, y1, x2, y2].
    """
    train = rows[rows.split == "train"]
    mean = {key: np.mean(np.stack(g.box.values), axis=0)
            for key, g in train.groupby(["n_persons", "lane"])}
    test = rows[rows.split == "test"]
    return np.stack([mean[key] for key in zip(test.n_persons, test.lane)]).astype(np.float32)
