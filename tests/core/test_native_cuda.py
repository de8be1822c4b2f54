"""The CUDA kernels of rv2._C against their CPU twins (run on a GPU by tools/gpu_check.sh)."""
import numpy as np
import pytest
from rv2 import _native

pytestmark = pytest.mark.gpu

# exact half-way points, both ends, NaN, infinities, signed zero, denormal-sized values
EDGES = np.array([0.5 / 255, 1.5 / 255, 2.5 / 255, 127.5 / 255, 254.5 / 255, 0.0, 1.0, np.nan,
                  np.inf, -np.inf, -0.0, 1e-30, -1e-30, 1.0 - 1e-7, 1.0 + 1e-7], np.float32)


def _op():
    mod = _native.native_module()
    if mod is None or not hasattr(mod, "to_uint8_cuda"):
        pytest.skip(f"rv2._C has no to_uint8_cuda (target {_native.build_info()['target']}): "
                    "build it with RV2_TARGET_DEVICE=cuda")
    return mod.to_uint8_cuda


def _on_gpu(x: np.ndarray, stream=None, n: int | None = None) -> np.ndarray:
    """to_uint8_cuda over x's first n values; the output starts filled with 77."""
    import torch

    op = _op()
    src = torch.from_numpy(np.ascontiguousarray(x, np.float32)).cuda()
    dst = torch.full(src.shape, 77, dtype=torch.uint8, device="cuda")
    stream = stream or torch.cuda.current_stream()
    with torch.cuda.stream(stream):
        op(src.data_ptr(), dst.data_ptr(), src.numel() if n is None else n, stream.cuda_stream)
    stream.synchronize()
    return dst.cpu().numpy()


def test_build_is_cuda_with_sm90():
    _op()
    info = _native.build_info()
    assert info["target"] == "cuda" and "90" in info["cuda_archs"] and info["cuda_version"]


def test_to_uint8_cuda_matches_both_cpu_twins_on_edges_and_random():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.2, 1.2, size=(3, 257, 129)).astype(np.float32)
    grid = (np.arange(256 * 16, dtype=np.float32) + 0.5) / np.float32(16 * 255)  # every level
    for arr in (EDGES, x, grid):
        got = _on_gpu(arr)
        assert got.dtype == np.uint8 and got.shape == arr.shape
        np.testing.assert_array_equal(got, _native.to_uint8_py(arr))
        np.testing.assert_array_equal(got, _native.native_module().to_uint8(arr))


def test_to_uint8_cuda_covers_more_than_one_grid_on_a_side_stream():
    import torch

    # the launch is capped at 65535 blocks x 256 threads: the grid-stride loop does the rest
    n = 65535 * 256 * 2 + 4099
    x = np.random.default_rng(1).uniform(-0.1, 1.1, n).astype(np.float32)
    got = _on_gpu(x, stream=torch.cuda.Stream())
    np.testing.assert_array_equal(got, _native.to_uint8_py(x))


def test_to_uint8_cuda_writes_exactly_n_values():
    x = np.full(1000, 0.5, np.float32)
    got = _on_gpu(x, n=999)
    assert (got[:999] == 128).all() and got[999] == 77
    assert (_on_gpu(x, n=0) == 77).all()  # n = 0: no launch, nothing written
