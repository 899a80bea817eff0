"""placeholder (replaced below)"""


def is_peft_format(sd):
    return any(k.startswith("base_model.model.") for k in sd)


def convert(sd, cfg, metadata):
    raise NotImplementedError


def convert_components(parts):
    raise NotImplementedError
