"""device_constant: made once per (values, dtype, device), equal to torch.tensor of the values."""
import torch

from src.utils.constants import clear_cache, device_constant


def test_one_tensor_per_values_dtype_and_device():
    clear_cache()
    a = device_constant([[1, 2], [3, 4.5]], torch.float32, "cpu")
    assert torch.equal(a, torch.tensor([[1, 2], [3, 4.5]]))
    assert device_constant(((1, 2), (3, 4.5)), torch.float32, torch.device("cpu")) is a  # lists or tuples alike
    assert device_constant([1, 2], torch.float64, "cpu").dtype == torch.float64
    assert device_constant([True, False], torch.bool, None).tolist() == [True, False]
    assert device_constant([1, 2], torch.float32, "cpu") is not device_constant([1, 3], torch.float32, "cpu")


def test_made_under_inference_mode_it_is_an_ordinary_tensor():
    clear_cache()
    with torch.inference_mode():
        c = device_constant([2.0], torch.float32, "cpu")
    assert not c.is_inference()
    x = torch.ones(1, requires_grad=True)
    (x * c).sum().backward()
    assert x.grad.item() == 2.0
