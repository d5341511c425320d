"""Built-in label sets and the synonyms used to match folder or column names to them."""

FER2013_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# FER+ order as in Microsoft's fer2013new.csv (the first 8 vote columns).
FERPLUS_LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")

LABEL_SETS = {"fer2013": FER2013_LABELS, "ferplus": FERPLUS_LABELS}

# Folder and csv spellings seen in public FER datasets, mapped to one canonical stem.
_SYNONYMS = {
    "angry": "anger", "anger": "anger",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral", "calm": "neutral",
    "contempt": "contempt",
}


def canonical_label(name: str) -> str:
    """Lower-case canonical form of a class name, so 'Happiness' and 'happy' match."""
    key = name.strip().lower()
    return _SYNONYMS.get(key, key)


def parse_labels(spec: str):
    """`fer2013`, `ferplus` or a comma-separated list of class names."""
    if spec in LABEL_SETS:
        return list(LABEL_SETS[spec])
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if len(names) < 2:
        raise ValueError(f"--labels {spec!r}: give 'fer2013', 'ferplus' or at least two comma-separated class names")
    if len(set(names)) != len(names):
        raise ValueError(f"--labels {spec!r}: class names must be unique")
    return names


def parse_label_map(spec: str):
    """`contempt=neutral,happiness=happy` -> {'contempt': 'neutral', 'happiness': 'happy'} (dataset class -> model label)."""
    mapping = {}
    for part in (p.strip() for p in spec.split(",")):
        source, sep, target = (s.strip() for s in part.partition("="))
        if not part or not sep or not source or not target:
            raise ValueError(f"--label-map {spec!r}: give DATASET_CLASS=MODEL_LABEL pairs separated by commas, "
                             "e.g. --label-map contempt=neutral")
        if canonical_label(source) in {canonical_label(s) for s in mapping}:
            raise ValueError(f"--label-map {spec!r}: {source!r} is mapped twice; keep one target per class")
        mapping[source] = target
    return mapping


def match_labels(model_labels, source_names, label_map=None):
    """The one label matcher: (source name -> model class index, source names that match no model label).

    Names match by canonical form (synonyms such as 'happiness'/'happy'). `label_map` (dataset class -> model
    label) renames dataset classes first; a key that names no source class, or a target the model lacks, raises
    ValueError, because a mistyped map would otherwise change nothing and go unnoticed.
    """
    canon = {canonical_label(n): i for i, n in enumerate(model_labels)}
    renames = {canonical_label(k): v for k, v in (label_map or {}).items()}
    source_canon = {canonical_label(n) for n in source_names}
    unused = [k for k in (label_map or {}) if canonical_label(k) not in source_canon]
    if unused:
        raise ValueError(f"--label-map names {unused}, which are not classes of this data (its classes: "
                         f"{list(source_names)}); fix the spelling or drop those pairs")
    bad_targets = [v for v in renames.values() if canonical_label(v) not in canon]
    if bad_targets:
        raise ValueError(f"--label-map targets {bad_targets} are not labels of the model {list(model_labels)}; "
                         "map each dataset class to one of the model's labels")
    mapping, unmatched = {}, []
    for name in source_names:
        idx = canon.get(canonical_label(renames.get(canonical_label(name), name)))
        if idx is None:
            unmatched.append(name)
        else:
            mapping[name] = idx
    return mapping, unmatched


def label_index_map(model_labels, source_names, label_map=None):
    """Map each source class name to the model's class index, or raise naming the ones that do not match."""
    mapping, missing = match_labels(model_labels, source_names, label_map)
    if missing:
        raise ValueError(
            f"class names {missing} do not match the model's labels {list(model_labels)}; "
            "rename those folders, map them with --label-map NAME=LABEL, or export the model with matching --labels")
    return mapping
