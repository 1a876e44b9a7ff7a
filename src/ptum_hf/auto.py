"""`AutoModelForCTR`: the Auto class of click-through-rate models, which transformers does not have."""

from collections import OrderedDict

from .configuration_ptum import PTUMConfig
from .modeling_ptum import PTUMForCTR


# transformers has no Auto class for click-through prediction. Its own Auto classes are built from a base class and a
# mapping that are underscored, but unchanged from transformers 4.x to 5.x and used so by other libraries. Should a
# release change them, `import ptum_hf` still works and `AutoModelForCTR` falls back to loading `PTUMForCTR`.
def _auto_factory():
    try:
        from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        return _BaseAutoModelClass, _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())
    except (ImportError, AttributeError, TypeError):
        return None, None


_AutoModelBase, _CTR_MAPPING = _auto_factory()

if _AutoModelBase is not None:

    class AutoModelForCTR(_AutoModelBase):
        """The Auto class of click-through-rate models: `AutoModelForCTR.from_pretrained(path)` (or `from_config`)
        builds the CTR head registered for the checkpoint's config class (`PTUMForCTR` for `PTUMConfig`); register
        others with `AutoModelForCTR.register(config_class, model_class)`, as with transformers' Auto classes."""

        _model_mapping = _CTR_MAPPING

    try:
        AutoModelForCTR.register(PTUMConfig, PTUMForCTR, exist_ok=True)
    except (AttributeError, TypeError, ValueError):
        _AutoModelBase = None
if _AutoModelBase is None:

    class AutoModelForCTR:
        """`PTUMForCTR.from_pretrained` / `from_config` (transformers' auto factory is not available)."""

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return PTUMForCTR.from_pretrained(*args, **kwargs)

        @classmethod
        def from_config(cls, config, **kwargs):
            return PTUMForCTR._from_config(config, **kwargs)
