"""cxrmesh: chest-radiograph retrieval and four-region lung quantification, as a gRPC/Kafka mesh."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cxrmesh")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"
