"""The bundled demo: procedural data, a judge, trainers and the shipped demo weights."""
