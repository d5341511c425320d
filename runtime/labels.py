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


def label_index_map(model_labels, source_names):
    """Map each source class name to the model's class index, or raise naming the ones that do not match."""
    canon = {canonical_label(n): i for i, n in enumerate(model_labels)}
    mapping, missing = {}, []
    for name in source_names:
        idx = canon.get(canonical_label(name))
        if idx is None:
            missing.append(name)
        else:
            mapping[name] = idx
    if missing:
        raise ValueError(
            f"class names {missing} do not match the model's labels {list(model_labels)}; "
            "rename those folders or export the model with matching --labels")
    return mapping
