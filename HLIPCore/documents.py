"""Reading the JSON/YAML documents people write by hand (prompt sets, training configs, label maps)."""
import json
import re
from pathlib import Path
from typing import Any, Union

from .errors import ConfigError


def is_yaml(path: Path) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def import_yaml(path: Path, what: str = "file"):
    try:
        import yaml  # noqa: PLC0415 - imported only for YAML files
    except ImportError:
        raise ConfigError(f"{path}: reading or writing a YAML {what} needs PyYAML (pip install pyyaml); "
                          "or use JSON") from None
    return yaml


# YAML 1.1 (PyYAML) reads `5e-4` - no dot - as a string; people write learning rates that way and mean numbers
# (YAML 1.2 and JSON agree with them)
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
                    r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


def yaml_load(text: str, yaml=None) -> Any:
    """`yaml.safe_load` that also reads 1e-4 as a float."""
    yaml = yaml or import_yaml(Path("<text>"))

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return yaml.load(text, Loader=Loader)


def read_document(path: Union[str, Path], what: str = "file") -> Any:
    """Parse a JSON/YAML file into plain Python objects (no validation); errors are one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc})") from None
    if is_yaml(path):
        yaml = import_yaml(path, what)
        try:
            return yaml_load(text, yaml)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
