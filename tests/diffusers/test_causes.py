"""The front's causes come from the one fix table: which option turns on which cause, and the two
causes only a diffusers service has."""
import pytest

from lib_sdfix.diffusers import CAUSE_TITLES, CAUSES
from lib_sdfix.diffusers.causes import SERVICE_CAUSES, cause_on
from lib_sdfix.settings import FIXES, SDFixSettings


def test_every_cause_is_a_fix_of_the_table_or_a_service_cause():
    fixed = {f.cause for f in FIXES if f.cause}
    assert fixed | set(SERVICE_CAUSES) == set(CAUSES) and not fixed & set(SERVICE_CAUSES)
    assert set(CAUSE_TITLES) == set(CAUSES)


@pytest.mark.parametrize("fix", [f for f in FIXES if f.cause], ids=lambda f: f.key)
def test_a_fix_option_turns_its_cause_on_and_off(fix):
    on, off = SDFixSettings(), SDFixSettings().changed(**{fix.key: False})
    for patch in fix.patches or ("",):
        assert cause_on(on, fix.cause, patch) is True
        assert cause_on(off, fix.cause, patch) is False, (fix.key, patch)
    assert cause_on(SDFixSettings(enabled=False), fix.cause) is False


def test_the_vae_decode_and_encode_follow_their_own_options():
    assert cause_on(SDFixSettings(guard_encode=False), "vae_precision", "decode") is True
    assert cause_on(SDFixSettings(guard_encode=False), "vae_precision", "encode") is False
    assert cause_on(SDFixSettings(precision_guard=False), "vae_precision", "encode") is True
    assert cause_on(SDFixSettings(precision_guard=False), "vae_precision", "decode") is False


@pytest.mark.parametrize("cause", SERVICE_CAUSES)
def test_a_service_cause_follows_the_master_switch_alone(cause):
    every_fix_off = SDFixSettings().changed(**{f.key: False for f in FIXES})
    assert cause_on(every_fix_off, cause) is True
    assert cause_on(SDFixSettings(enabled=False), cause) is False


def test_an_unknown_cause_is_an_error():
    with pytest.raises(KeyError):
        cause_on(SDFixSettings(), "sharpen")


def test_the_late_refine_removes_no_cause_a_service_can_have():
    """Nothing is misconfigured when a latent is not refined: the audit has no cause for it, and the
    diffusers front runs it only when asked (lib_sdfix.diffusers.refine)."""
    from lib_sdfix.settings import fix

    assert fix("late_refine").cause == "" and "late_refine" not in CAUSES
    every_fix_off = SDFixSettings().changed(**{f.key: False for f in FIXES})
    assert all(cause_on(every_fix_off.changed(late_refine=True), c) is cause_on(every_fix_off, c) for c in CAUSES)
