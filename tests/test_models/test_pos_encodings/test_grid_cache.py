"""GridCache: built once per key, bounded, inference tensors kept apart, bypassed when compiling."""
import pytest
import torch

from mmsape.models.pos_encodings.grid_cache import GridCache


class CountingBuilder:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return torch.full((2, ), float(self.calls))


def test_builds_once_per_key_and_evicts_the_least_recently_used():
    cache, build = GridCache(max_entries=2), CountingBuilder()
    a = cache.get('a', build)
    assert cache.get('a', build) is a and build.calls == 1
    cache.get('b', build)
    cache.get('a', build)  # 'a' is now the most recent
    cache.get('c', build)  # evicts 'b'
    assert len(cache) == 2 and build.calls == 3
    assert cache.get('a', build) is a and build.calls == 3
    cache.get('b', build)
    assert build.calls == 4
    cache.clear()
    assert len(cache) == 0


def test_inference_mode_tensors_never_reach_autograd():
    cache = GridCache()
    with torch.inference_mode():
        inference = cache.get('grid', lambda: torch.ones(3))
    assert inference.is_inference()
    regular = cache.get('grid', lambda: torch.ones(3))
    assert not regular.is_inference()
    weight = torch.ones(3, requires_grad=True)
    (weight * regular).sum().backward()  # would fail with the inference tensor
    assert torch.equal(weight.grad, torch.ones(3))


def test_compiled_code_builds_in_the_graph():
    cache, build = GridCache(), CountingBuilder()

    @torch.compile(backend='eager', fullgraph=True)
    def scaled(x):
        return x * cache.get('grid', build)

    assert torch.equal(scaled(torch.ones(2)), torch.ones(2))
    assert len(cache) == 0  # nothing stored from inside the compiled region


def test_bad_size():
    with pytest.raises(ValueError, match='max_entries'):
        GridCache(max_entries=0)
