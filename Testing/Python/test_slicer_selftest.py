"""The module's own self-test (HLIPSlicerTest, what Slicer runs for ctest py_HLIPSlicer) run on the headless
scene, so the code that only real Slicer would otherwise execute is exercised here too."""
import pytest

from slicer_env import mrml_app, slicer_module  # noqa: F401


@pytest.mark.slow
def test_module_self_test(mrml_app, slicer_module):
    result = slicer_module.HLIPSlicerTest("runTest").run()
    assert result.wasSuccessful(), [str(e[1]) for e in result.errors + result.failures]
