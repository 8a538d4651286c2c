import numpy as np
import pytest
import torch

from pipeline.data.preprocess import preprocess
from pipeline.data.split import split
from pipeline.data.volumes import read_image, to_metatensor
from pipeline.inference.postprocess import decide_largest_component, keep_largest_component
from pipeline.inference.predictor import predict
from pipeline.networks.description import Postprocess
from pipeline.networks.model import load_model
from pipeline.stages.train import train as train_stage
from tests.conftest import write_volume
from tests.inference.test_predictor import OracleOfBrightness, _description


def _cube(shape, corner, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c, c + size) for c in corner)] = True
    return mask


def _case(stray: bool, seed: int):
    """Class 1: one organ, predicted a little too small, plus (if ``stray``) a false blob far away.
    Class 2: two real, separate parts (like paired kidneys), both found."""
    shape, shift = (40, 40, 40), seed % 3
    reference = np.zeros(shape, np.uint8)
    reference[_cube(shape, (2 + shift, 2, 2), 12)] = 1
    reference[_cube(shape, (25, 25 + shift, 2), 8)] = 2
    reference[_cube(shape, (25, 2, 25), 5)] = 2
    prediction = reference.copy()
    prediction[_cube(shape, (2 + shift, 2, 2), 12) & ~_cube(shape, (2 + shift, 2, 2), 11)] = 0
    if stray:
        prediction[_cube(shape, (30, 30, 30), 4)] = 1
    return prediction, reference


def test_a_stray_blob_that_hurts_dice_is_removed_and_a_real_second_part_is_kept():
    cases = [_case(stray=i % 2 == 0, seed=i) for i in range(4)]
    assert decide_largest_component(iter(cases), n_classes=3) == [1]


def test_nothing_is_chosen_where_every_prediction_is_one_piece():
    cases = [_case(stray=False, seed=i) for i in range(3)]
    assert 1 not in decide_largest_component(cases, n_classes=3)


def test_keeping_the_largest_component_touches_only_the_classes_named():
    prediction, _ = _case(stray=True, seed=0)
    kept = keep_largest_component(prediction.copy(), [1])
    assert not kept[30:34, 30:34, 30:34].any(), "the stray class-1 blob is background now"
    assert (kept == 1).sum() == 11**3 and (kept == 2).sum() == (prediction == 2).sum()
    np.testing.assert_array_equal(keep_largest_component(prediction.copy(), []), prediction)


def test_predict_applies_the_post_processing_the_model_file_records(tmp_path):
    image = np.random.RandomState(0).uniform(0, 100, (40, 36, 30)).astype(np.float32)
    image[5:20, 5:20, 5:20] = 1000  # the organ
    image[30:34, 28:32, 22:26] = 1000  # a small bright blob apart from it
    path = write_volume(tmp_path / "two_blobs.nii.gz", image)
    description = _description(patch=(16, 16, 16))
    as_is = predict(OracleOfBrightness(), description, to_metatensor(read_image(path)), torch.device("cpu")).labels
    description.postprocess = Postprocess(largest_component_classes=[1])
    post = predict(OracleOfBrightness(), description, to_metatensor(read_image(path)), torch.device("cpu")).labels
    assert as_is[31, 29, 23] == 1 and post[31, 29, 23] == 0
    np.testing.assert_array_equal(post[:25, :25, :25], as_is[:25, :25, :25])


@pytest.mark.parametrize("largest_component", [True, False])
def test_training_records_its_decision_in_the_model_file(
    hippocampus, tiny_params, tmp_path, monkeypatch, largest_component
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = tiny_params.model_copy(
        update={"inference": tiny_params.inference.model_copy(update={"largest_component": largest_component})}
    )
    params.train = params.train.model_copy(update={"epochs": 1})
    preprocess(hippocampus, tmp_path / "prep", params.data, params.preprocess)
    split(tmp_path / "prep" / "manifest.csv", tmp_path / "split.json", params.split, params.seed)
    train_stage(tmp_path / "prep", tmp_path / "split.json", tmp_path / "models", params)
    _, description = load_model(tmp_path / "models" / "model.pt")
    if largest_component:
        assert set(description.largest_component_classes) <= {1, 2}
    else:
        assert description.postprocess is None
    assert "tta" not in description.inference.model_dump()  # chosen when segmenting, not by training
