"""placeholder (replaced below)"""


def is_diffusers_format(sd):
    return False


def convert(sd, metadata):
    raise NotImplementedError
