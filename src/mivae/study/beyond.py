"""Beyond the thesis: the reproduce study's second stage, on the same six settings and test images.

For every setting (Random Pixels or Vertical Lines at 50, 70 and 90 %) it trains and evaluates

    mask-mlp, mask-cnn      the thesis' MLP and CNN on mask-aware inputs: zero-filled values and the mask
    incomplete-vae          a VAE that never sees a clean image: MIWAE for Random Pixels (missing at
                            random), not-MIWAE with self-masking missingness for Vertical Lines
    incomplete-vae+mlp      the thesis' MLP on its imputations, tested with one imputation (self-normalised
                            importance sampling), K imputations weighted by importance (supMIWAE's
                            p(y | x_obs)) and K imputations averaged uniformly (the thesis' way)
    mean+mlp, iterative+mlp scikit-learn's SimpleImputer(mean) and IterativeImputer, then the thesis' MLP

and Tables 6 and 7's scenario again: the MLP and CNN trained on clean images, tested on one imputation
by the incomplete-data VAE, the mean and the IterativeImputer (`clean-<classifier>-on-<imputer>`).
KNNImputer is left out: it compares every image with every fitted one, so imputing 70,000 MNIST images
would take hours (BENCHMARKS.md, "Measurements behind the defaults").

Every model has its default configuration (no search: the budget goes to more models instead) and stops
early on validation accuracy or bound; the report picks each setting's best method by validation accuracy.
"""

import dataclasses
from functools import partial
from typing import TYPE_CHECKING

from mivae.config import CNNConfig, MIWAEConfig, MLPConfig

if TYPE_CHECKING:  # the study runs this stage; importing it at run time would be circular
    from mivae.study.reproduce import Study

BASELINES = ("mean", "iterative")  # fills of mivae.images.problem that are scikit-learn imputers
CLASSIFIERS = ("mlp", "cnn")


def incomplete_kind(method):
    """The VAE for incomplete data of a corruption method: not-MIWAE where missingness is structured."""
    return "not-miwae" if method == "vertical-lines" else "miwae"


def run_setting(study: "Study", setting, data, cleans):
    """Trains and evaluates the beyond-the-thesis models of one setting in `study` (its cached units: `trained`,
    `evaluated`, `evaluate`); `cleans` maps "mlp" / "cnn" to the (Run, search summary, key) of the classifiers
    trained on clean images."""
    epochs, seed = study.preset.beyond_epochs, study.seed
    for classifier, config in (("mlp", MLPConfig(mask_input=True)), ("cnn", CNNConfig(mask_input=True))):
        run, key = study.trained(
            f"beyond-mask-{classifier}-{setting}", classifier, data, config, epochs[f"mask-{classifier}"]
        )
        study.evaluated(setting, f"mask-{classifier}", key, partial(study.evaluate, run, data))

    kind = incomplete_kind(data.method)
    vae, vae_key = study.trained(f"beyond-{kind}-{setting}", kind, data, MIWAEConfig(), epochs["incomplete-vae"])
    study.evaluated(setting, "incomplete-vae", vae_key, partial(study.evaluate, vae, data), extra={"kind": kind})
    run, key = study.trained(
        f"beyond-{kind}+mlp-{setting}",
        f"{kind}+mlp",
        data,
        MLPConfig(),
        epochs["incomplete-vae+mlp"],
        vae=(vae, vae_key),
    )
    samples = MIWAEConfig().eval_samples  # K, the imputations the importance weights average
    study.evaluated(
        setting,
        "incomplete-vae+mlp",
        key,
        partial(study.evaluate, run, data, imputations=(samples,), seed=seed),
        extra={"kind": f"{kind}+mlp"},
        seed=seed,
    )
    for classifier, (clean, _, clean_key) in cleans.items():
        study.evaluated(
            setting,
            f"clean-{classifier}-on-incomplete-vae",
            clean_key,
            partial(study.evaluate, clean, data, vae_run=vae),
            vae=vae_key,
        )

    for baseline in BASELINES:
        filled = dataclasses.replace(data, fill=baseline)
        run, key = study.trained(f"beyond-{baseline}+mlp-{setting}", "mlp", filled, MLPConfig(), epochs["imputed-mlp"])
        study.evaluated(setting, f"{baseline}+mlp", key, partial(study.evaluate, run, filled))
        for classifier, (clean, _, clean_key) in cleans.items():
            study.evaluated(
                setting,
                f"clean-{classifier}-on-{baseline}",
                clean_key,
                partial(study.evaluate, clean, filled),
                fill=baseline,
            )
