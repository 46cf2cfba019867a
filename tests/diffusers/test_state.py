"""The front's method wrappers are PatchSet patches kept on the object: installed once, never
wrapped again, and removing them puts back exactly what was there."""
from lib_sdfix.diffusers.state import is_ours, unwrap_method, wrap_method


class Pipe:
    def encode(self, x):
        return x + 1


def _doubling(original):
    def wrapper(*args, **kwargs):
        return 2 * original(*args, **kwargs)

    return wrapper


def test_a_wrapper_is_installed_once_and_removal_leaves_no_trace():
    pipe = Pipe()
    assert wrap_method(pipe, "encode", _doubling) is True
    assert wrap_method(pipe, "encode", _doubling) is False, "installed once"
    assert pipe.encode(1) == 4 and is_ours(pipe.__dict__["encode"])
    unwrap_method(pipe, "encode")
    assert pipe.__dict__ == {} and pipe.encode(1) == 2, "the class's method again, nothing left on the object"
    unwrap_method(pipe, "encode")  # nothing to remove: nothing happens
    assert pipe.__dict__ == {}


def test_another_librarys_wrapper_is_called_through_and_put_back():
    pipe = Pipe()
    theirs = lambda x: Pipe.encode(pipe, x) * 10  # noqa: E731
    pipe.encode = theirs
    wrap_method(pipe, "encode", _doubling)
    assert pipe.encode(1) == 40
    unwrap_method(pipe, "encode")
    assert pipe.encode is theirs


def test_a_wrapper_someone_wrapped_again_is_not_stacked_on_rewrapping():
    pipe = Pipe()
    wrap_method(pipe, "encode", _doubling)
    ours = pipe.encode
    pipe.encode = lambda x: ours(x) + 100  # another library on top of SDFix's wrapper
    theirs = pipe.encode
    unwrap_method(pipe, "encode")  # cannot come off from under theirs: it waits until it is on top again
    assert pipe.encode is theirs and pipe.encode(1) == 104
    pipe.encode = ours  # they put back what they found
    assert wrap_method(pipe, "encode", _doubling) is False, "ours is there: not wrapped again"
    assert pipe.encode is ours and pipe.encode(1) == 4
    unwrap_method(pipe, "encode")
    assert pipe.__dict__ == {}
