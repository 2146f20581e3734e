"""GPU visibility (CUDA_VISIBLE_DEVICES semantics) and the CPU core split per rank."""

from tpworker.planning.hardware import cpu_threads_binding, select_visible, visible_gpus

UUIDS = ["GPU-aaa1", "GPU-abb2", "GPU-ccc3", "GPU-ddd4"]


def test_cuda_visible_devices_selects_and_orders_gpus():
    assert select_visible(None, UUIDS) == [0, 1, 2, 3]
    assert select_visible("", UUIDS) == []
    assert select_visible("2,0", UUIDS) == [2, 0]
    assert select_visible("GPU-c,1", UUIDS) == [2, 1]
    assert select_visible("GPU-a", UUIDS) == []  # ambiguous prefix: CUDA stops there
    assert select_visible("0,9,1", UUIDS) == [0]  # an invalid entry ends the list
    assert select_visible("1,1", UUIDS) == [1]


def test_no_gpu_on_this_machine():
    # There is no NVIDIA driver here (CI has none either): NVML cannot load, so no GPU is visible.
    assert visible_gpus(None) == []


def test_each_cpu_rank_gets_its_own_cores():
    assert cpu_threads_binding(1, [0, 1]) is None
    assert cpu_threads_binding(2, [0, 1]) == "0|1"
    assert cpu_threads_binding(2, list(range(8))) == "0-3|4-7"
    assert cpu_threads_binding(4, [0, 1, 2, 3, 8, 9, 10, 11]) == "0-1|2-3|8-9|10-11"
    assert cpu_threads_binding(3, [0, 1]) == "nobind"
