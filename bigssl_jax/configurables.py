"""Every gin configurable of the project, registered in one place.

Library modules never import gin; this file wraps their config dataclasses and model
wrappers so gin files can bind them. Entry points use the wrapped names from here
(e.g. `configurables.EncoderConfig()` returns the config with the gin bindings applied).
Each wrapped name equals the class name, so gin files read `EncoderConfig.num_layers = 17`.
"""

import gin

from bigssl_jax import experiment, input_pipeline, optimizers, partitioning, trainer
from bigssl_jax.jobs import aot
from bigssl_jax.layers import frontend, rnnt_decoder
from bigssl_jax.losses import ssl_losses
from bigssl_jax.models import asr, best_rq, ctc_model, encoder, rnnt_model, w2v_bert, wav2vec2


def _register(cls, name: str | None = None):
    return gin.external_configurable(cls, name=name or cls.__name__)


# --- meshes (bigssl_jax.partitioning) -----------------------------------------------------
MeshConfig = _register(partitioning.MeshConfig)

# --- front end (bigssl_jax.layers.frontend) ------------------------------------------------
LogMelConfig = _register(frontend.LogMelConfig)
SpecAugmentConfig = _register(frontend.SpecAugmentConfig)

# --- encoder (bigssl_jax.models.encoder) ---------------------------------------------------
EncoderConfig = _register(encoder.EncoderConfig)

# --- input (bigssl_jax.input_pipeline) -----------------------------------------------------
InputConfig = _register(input_pipeline.InputConfig)

# --- self-supervised objectives ------------------------------------------------------------
SSLLossWeights = _register(ssl_losses.SSLLossWeights)
BestRqConfig = _register(best_rq.BestRqConfig)
BestRqTrainModel = _register(best_rq.BestRqTrainModel)
Wav2Vec2Config = _register(wav2vec2.Wav2Vec2Config)
Wav2Vec2TrainModel = _register(wav2vec2.Wav2Vec2TrainModel)
W2vBertConfig = _register(w2v_bert.W2vBertConfig)
W2vBertTrainModel = _register(w2v_bert.W2vBertTrainModel)

# --- fine-tuning (bigssl_jax.models.asr, ctc_model, rnnt_model) --------------------------
DecodingConfig = _register(asr.DecodingConfig)
CtcTrainModel = _register(ctc_model.CtcTrainModel)
RnntDecoderConfig = _register(rnnt_decoder.RnntDecoderConfig)
RnntTrainModel = _register(rnnt_model.RnntTrainModel)

# --- training (bigssl_jax.trainer, optimizers, experiment) ----------------------------------
OptimizerConfig = _register(optimizers.OptimizerConfig)
TrainerConfig = _register(trainer.TrainerConfig)
ExperimentConfig = _register(experiment.ExperimentConfig)

# --- ahead-of-time compilation (bigssl_jax.jobs.aot) ---------------------------------------
CompileConfig = _register(aot.CompileConfig)

# --- transfer (bigssl_jax.models.classifier) -----------------------------------------------
from bigssl_jax.models import classifier  # noqa: E402

ClassifierTrainModel = _register(classifier.ClassifierTrainModel)

# --- language model (bigssl_jax.models.transformer_lm, bigssl_tasks.text_tasks) ------------
from bigssl_jax.models import transformer_lm  # noqa: E402
from bigssl_tasks import text_tasks  # noqa: E402

TransformerLmConfig = _register(transformer_lm.TransformerLmConfig)
LmTrainModel = _register(transformer_lm.LmTrainModel)
TextInputConfig = _register(text_tasks.TextInputConfig)
