"""One constructor and input per ``torch.nn`` class in the registry (``MODULE_CASES``), or the
reason it has none (``MODULE_SKIPS``)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
import torch.nn.functional as F

from .base import Case, f, ix, mod, sign


def _tf_layer(decoder: bool = False) -> nn.Module:
    cls = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    return cls(4, 2, 8, batch_first=True)


def _pair(t: Any) -> tuple:
    return t[0], t[1]


_POOL1 = {nn.MaxUnpool1d: F.max_pool1d, nn.MaxUnpool2d: F.max_pool2d, nn.MaxUnpool3d: F.max_pool3d}
_I1, _I2, _I3 = f(2, 3, 6), f(2, 3, 4, 4), f(1, 2, 4, 4, 4)  # (N,C,L), (N,C,H,W), (N,C,D,H,W)

# One constructor and input per torch.nn class in the registry (train mode unless noted).
MODULE_CASES: dict[type, Case] = {
    nn.AdaptiveAvgPool1d: mod(lambda: nn.AdaptiveAvgPool1d(2), _I1),
    nn.AdaptiveAvgPool2d: mod(lambda: nn.AdaptiveAvgPool2d(2), _I2),
    nn.AdaptiveAvgPool3d: mod(lambda: nn.AdaptiveAvgPool3d(2), _I3),
    nn.AdaptiveMaxPool1d: mod(lambda: nn.AdaptiveMaxPool1d(2), _I1),
    nn.AdaptiveMaxPool2d: mod(lambda: nn.AdaptiveMaxPool2d(2), _I2),
    nn.AdaptiveMaxPool3d: mod(lambda: nn.AdaptiveMaxPool3d(2), _I3),
    nn.AdaptiveLogSoftmaxWithLoss: mod(
        lambda: nn.AdaptiveLogSoftmaxWithLoss(16, 6, [2, 4], div_value=2.0), f(4, 16), ix(4, high=6)
    ),
    nn.AlphaDropout: mod(lambda: nn.AlphaDropout(0.5), f(3, 4)),
    nn.FeatureAlphaDropout: mod(lambda: nn.FeatureAlphaDropout(0.5), _I2),
    nn.AvgPool1d: mod(lambda: nn.AvgPool1d(2), _I1),
    nn.AvgPool2d: mod(lambda: nn.AvgPool2d(2), _I2),
    nn.AvgPool3d: mod(lambda: nn.AvgPool3d(2), _I3),
    nn.BCELoss: mod(nn.BCELoss, f(3, 4), f(3, 4)),
    nn.BCEWithLogitsLoss: mod(nn.BCEWithLogitsLoss, f(3, 4), f(3, 4)),
    nn.BatchNorm1d: mod(lambda: nn.BatchNorm1d(3), f(4, 3)),
    nn.BatchNorm2d: mod(lambda: nn.BatchNorm2d(3), f(2, 3, 4, 4)),
    nn.BatchNorm3d: mod(lambda: nn.BatchNorm3d(3), f(2, 3, 2, 2, 2)),
    nn.SyncBatchNorm: mod(
        lambda: nn.SyncBatchNorm(3),
        f(2, 3, 4, 4),
        train=False,
        note="eval mode (training needs a process group and a GPU)",
    ),
    nn.Bilinear: mod(lambda: nn.Bilinear(4, 5, 6), f(3, 4), f(3, 5)),
    nn.CELU: mod(nn.CELU, f(3, 4)),
    nn.CTCLoss: mod(
        nn.CTCLoss,
        f(5, 2, 4),
        ix(2, 3, high=3),
        call=lambda m, lp, t: m(lp.log_softmax(2), t + 1, (5, 5), (3, 3)),
    ),
    nn.ChannelShuffle: mod(lambda: nn.ChannelShuffle(2), f(1, 4, 2, 2)),
    nn.CircularPad1d: mod(lambda: nn.CircularPad1d(1), f(2, 3, 4)),
    nn.CircularPad2d: mod(lambda: nn.CircularPad2d(1), f(1, 2, 3, 3)),
    nn.CircularPad3d: mod(lambda: nn.CircularPad3d(1), f(1, 1, 2, 2, 2)),
    nn.ConstantPad1d: mod(lambda: nn.ConstantPad1d(1, 0.5), f(2, 3, 4)),
    nn.ConstantPad2d: mod(lambda: nn.ConstantPad2d(1, 0.5), f(1, 2, 3, 3)),
    nn.ConstantPad3d: mod(lambda: nn.ConstantPad3d(1, 0.5), f(1, 1, 2, 2, 2)),
    nn.Conv1d: mod(lambda: nn.Conv1d(3, 4, 3, padding=1), _I1),
    nn.Conv2d: mod(lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), _I2),
    nn.Conv3d: mod(lambda: nn.Conv3d(2, 3, 3, padding=1), _I3),
    nn.ConvTranspose1d: mod(lambda: nn.ConvTranspose1d(3, 4, 3, stride=2), _I1),
    nn.ConvTranspose2d: mod(lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), _I2),
    nn.ConvTranspose3d: mod(lambda: nn.ConvTranspose3d(2, 3, 2), _I3),
    nn.CosineEmbeddingLoss: mod(nn.CosineEmbeddingLoss, f(3, 4), f(3, 4), sign(3)),
    nn.CosineSimilarity: mod(nn.CosineSimilarity, f(3, 4), f(3, 4)),
    nn.CrossEntropyLoss: mod(nn.CrossEntropyLoss, f(3, 4), ix(3, high=4)),
    nn.CrossMapLRN2d: mod(lambda: nn.CrossMapLRN2d(3), f(2, 4, 3, 3)),
    nn.Dropout: mod(lambda: nn.Dropout(0.5), f(3, 4)),
    nn.Dropout1d: mod(lambda: nn.Dropout1d(0.5), f(2, 3, 4)),
    nn.Dropout2d: mod(lambda: nn.Dropout2d(0.5), _I2),
    nn.Dropout3d: mod(lambda: nn.Dropout3d(0.5), f(2, 3, 2, 2, 2)),
    nn.ELU: mod(nn.ELU, f(3, 4)),
    nn.Embedding: mod(lambda: nn.Embedding(10, 3), ix(2, 4, high=10)),
    nn.EmbeddingBag: mod(lambda: nn.EmbeddingBag(10, 3, mode="mean"), ix(2, 3, high=10)),
    nn.Flatten: mod(nn.Flatten, f(2, 3, 4)),
    nn.Fold: mod(lambda: nn.Fold((4, 4), 2), f(1, 8, 9)),
    nn.FractionalMaxPool2d: mod(lambda: nn.FractionalMaxPool2d(2, output_size=3), f(1, 2, 6, 6)),
    nn.FractionalMaxPool3d: mod(lambda: nn.FractionalMaxPool3d(2, output_size=2), f(1, 2, 5, 5, 5)),
    nn.GELU: mod(nn.GELU, f(3, 4)),
    nn.GLU: mod(nn.GLU, f(3, 4)),
    nn.GRU: mod(
        lambda: nn.GRU(4, 5), f(3, 2, 4), note="unrolled: one torch.gru_cell vertex per step"
    ),
    nn.GRUCell: mod(lambda: nn.GRUCell(4, 5), f(3, 4)),
    nn.GaussianNLLLoss: mod(nn.GaussianNLLLoss, f(3, 4), f(3, 4), f(3, 4)),
    nn.GroupNorm: mod(lambda: nn.GroupNorm(2, 4), f(2, 4, 3)),
    nn.Hardshrink: mod(lambda: nn.Hardshrink(0.3), f(3, 4)),
    nn.Hardsigmoid: mod(nn.Hardsigmoid, f(3, 4)),
    nn.Hardswish: mod(nn.Hardswish, f(3, 4)),
    nn.Hardtanh: mod(lambda: nn.Hardtanh(0.3, 0.6), f(3, 4)),
    nn.HingeEmbeddingLoss: mod(nn.HingeEmbeddingLoss, f(3, 4), sign(3, 4)),
    nn.HuberLoss: mod(lambda: nn.HuberLoss(delta=0.3), f(3, 4), f(3, 4)),
    nn.Identity: mod(nn.Identity, f(3, 4)),
    nn.InstanceNorm1d: mod(
        lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True), f(2, 3, 5)
    ),
    nn.InstanceNorm2d: mod(
        lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True), f(2, 3, 3, 3)
    ),
    nn.InstanceNorm3d: mod(
        lambda: nn.InstanceNorm3d(3, affine=True, track_running_stats=True), f(2, 3, 2, 2, 2)
    ),
    nn.KLDivLoss: mod(lambda: nn.KLDivLoss(reduction="batchmean"), f(3, 4), f(3, 4)),
    nn.L1Loss: mod(nn.L1Loss, f(3, 4), f(3, 4)),
    nn.LPPool1d: mod(lambda: nn.LPPool1d(2, 2), _I1),
    nn.LPPool2d: mod(lambda: nn.LPPool2d(2, 2), _I2),
    nn.LPPool3d: mod(lambda: nn.LPPool3d(2, 2), _I3),
    nn.LSTM: mod(
        lambda: nn.LSTM(4, 5), f(3, 2, 4), note="unrolled: one torch.lstm_cell vertex per step"
    ),
    nn.LSTMCell: mod(lambda: nn.LSTMCell(4, 5), f(3, 4)),
    nn.LayerNorm: mod(lambda: nn.LayerNorm(4), f(3, 4)),
    nn.LeakyReLU: mod(lambda: nn.LeakyReLU(0.1), f(3, 4)),
    nn.Linear: mod(lambda: nn.Linear(4, 3), f(3, 4)),
    nn.LocalResponseNorm: mod(lambda: nn.LocalResponseNorm(2), f(2, 4, 3, 3)),
    nn.LogSigmoid: mod(nn.LogSigmoid, f(3, 4)),
    nn.LogSoftmax: mod(lambda: nn.LogSoftmax(1), f(3, 4)),
    nn.MSELoss: mod(nn.MSELoss, f(3, 4), f(3, 4)),
    nn.MarginRankingLoss: mod(lambda: nn.MarginRankingLoss(0.1), f(3), f(3), sign(3)),
    nn.MaxPool1d: mod(lambda: nn.MaxPool1d(2), _I1),
    nn.MaxPool2d: mod(lambda: nn.MaxPool2d(2), _I2),
    nn.MaxPool3d: mod(lambda: nn.MaxPool3d(2), _I3),
    **{
        cls: mod(
            lambda cls=cls: cls(2),
            shape,
            call=lambda m, x, pool=_POOL1[cls]: m(*_pair(pool(x, 2, return_indices=True))),
            note="after F.max_poolNd(..., return_indices=True)",
        )
        for cls, shape in ((nn.MaxUnpool1d, _I1), (nn.MaxUnpool2d, _I2), (nn.MaxUnpool3d, _I3))
    },
    nn.Mish: mod(nn.Mish, f(3, 4)),
    nn.MultiLabelMarginLoss: mod(nn.MultiLabelMarginLoss, f(3, 4), ix(3, 4, high=4)),
    nn.MultiLabelSoftMarginLoss: mod(nn.MultiLabelSoftMarginLoss, f(3, 4), f(3, 4)),
    nn.MultiMarginLoss: mod(nn.MultiMarginLoss, f(3, 4), ix(3, high=4)),
    nn.MultiheadAttention: mod(
        lambda: nn.MultiheadAttention(4, 2), f(3, 2, 4), call=lambda m, q: m(q, q, q)
    ),
    nn.NLLLoss: mod(nn.NLLLoss, f(3, 4), ix(3, high=4)),
    nn.NLLLoss2d: mod(nn.NLLLoss2d, f(2, 3, 2, 2), ix(2, 2, 2, high=3)),
    nn.PReLU: mod(nn.PReLU, f(2, 3)),
    nn.PairwiseDistance: mod(nn.PairwiseDistance, f(3, 4), f(3, 4)),
    nn.PixelShuffle: mod(lambda: nn.PixelShuffle(2), f(1, 4, 2, 2)),
    nn.PixelUnshuffle: mod(lambda: nn.PixelUnshuffle(2), f(1, 1, 4, 4)),
    nn.PoissonNLLLoss: mod(nn.PoissonNLLLoss, f(3, 4), f(3, 4)),
    nn.RMSNorm: mod(lambda: nn.RMSNorm(4), f(3, 4)),
    nn.RNN: mod(
        lambda: nn.RNN(4, 5), f(3, 2, 4), note="unrolled: one torch.rnn_tanh_cell vertex per step"
    ),
    nn.RNNCell: mod(lambda: nn.RNNCell(4, 5), f(3, 4)),
    nn.RReLU: mod(nn.RReLU, f(3, 4, lo=-0.8, hi=0.8)),
    nn.ReLU: mod(nn.ReLU, f(3, 4, lo=-0.8, hi=0.8)),
    nn.ReLU6: mod(nn.ReLU6, f(3, 4)),
    nn.ReflectionPad1d: mod(lambda: nn.ReflectionPad1d(1), f(2, 3, 4)),
    nn.ReflectionPad2d: mod(lambda: nn.ReflectionPad2d(1), f(1, 2, 3, 3)),
    nn.ReflectionPad3d: mod(lambda: nn.ReflectionPad3d(1), f(1, 1, 3, 3, 3)),
    nn.ReplicationPad1d: mod(lambda: nn.ReplicationPad1d(1), f(2, 3, 4)),
    nn.ReplicationPad2d: mod(lambda: nn.ReplicationPad2d(1), f(1, 2, 3, 3)),
    nn.ReplicationPad3d: mod(lambda: nn.ReplicationPad3d(1), f(1, 1, 2, 2, 2)),
    nn.SELU: mod(nn.SELU, f(3, 4)),
    nn.SiLU: mod(nn.SiLU, f(3, 4)),
    nn.Sigmoid: mod(nn.Sigmoid, f(3, 4)),
    nn.SmoothL1Loss: mod(lambda: nn.SmoothL1Loss(beta=0.3), f(3, 4), f(3, 4)),
    nn.SoftMarginLoss: mod(nn.SoftMarginLoss, f(3, 4), sign(3, 4)),
    nn.Softmax: mod(lambda: nn.Softmax(1), f(3, 4)),
    nn.Softmax2d: mod(nn.Softmax2d, f(2, 3, 2, 2)),
    nn.Softmin: mod(lambda: nn.Softmin(1), f(3, 4)),
    nn.Softplus: mod(nn.Softplus, f(3, 4)),
    nn.Softshrink: mod(lambda: nn.Softshrink(0.3), f(3, 4)),
    nn.Softsign: mod(nn.Softsign, f(3, 4)),
    nn.Tanh: mod(nn.Tanh, f(3, 4)),
    nn.Tanhshrink: mod(nn.Tanhshrink, f(3, 4)),
    nn.Threshold: mod(lambda: nn.Threshold(0.5, 0.0), f(3, 4)),
    nn.Transformer: mod(
        lambda: nn.Transformer(4, 2, 1, 1, 8, batch_first=True),
        f(2, 3, 4),
        f(2, 2, 4),
        train=False,
        note="eval mode",
    ),
    nn.TransformerEncoder: mod(
        lambda: nn.TransformerEncoder(_tf_layer(), 1, enable_nested_tensor=False),
        f(2, 3, 4),
        train=False,
        note="eval mode",
    ),
    nn.TransformerDecoder: mod(
        lambda: nn.TransformerDecoder(_tf_layer(True), 1),
        f(2, 2, 4),
        f(2, 3, 4),
        train=False,
        note="eval mode",
    ),
    nn.TransformerEncoderLayer: mod(_tf_layer, f(2, 3, 4), train=False, note="eval mode"),
    nn.TransformerDecoderLayer: mod(
        lambda: _tf_layer(True), f(2, 2, 4), f(2, 3, 4), train=False, note="eval mode"
    ),
    nn.TripletMarginLoss: mod(nn.TripletMarginLoss, f(3, 4), f(3, 4), f(3, 4)),
    nn.TripletMarginWithDistanceLoss: mod(
        nn.TripletMarginWithDistanceLoss, f(3, 4), f(3, 4), f(3, 4)
    ),
    nn.Unflatten: mod(lambda: nn.Unflatten(1, (2, 2)), f(3, 4)),
    nn.Unfold: mod(lambda: nn.Unfold(2), f(1, 2, 4, 4)),
    nn.Upsample: mod(lambda: nn.Upsample(scale_factor=2), f(1, 2, 3, 3)),
    nn.UpsamplingBilinear2d: mod(lambda: nn.UpsamplingBilinear2d(scale_factor=2), f(1, 2, 3, 3)),
    nn.UpsamplingNearest2d: mod(lambda: nn.UpsamplingNearest2d(scale_factor=2), f(1, 2, 3, 3)),
    nn.ZeroPad1d: mod(lambda: nn.ZeroPad1d(1), f(2, 3, 4)),
    nn.ZeroPad2d: mod(lambda: nn.ZeroPad2d(1), f(1, 2, 3, 3)),
    nn.ZeroPad3d: mod(lambda: nn.ZeroPad3d(1), f(1, 1, 2, 2, 2)),
    nn.LinearCrossEntropyLoss: mod(lambda: nn.LinearCrossEntropyLoss(4, 5), f(3, 4), ix(3, high=5)),
}
MODULE_SKIPS: dict[type, str] = {
    nn.RNNBase: "abstract base of RNN/LSTM/GRU (those are tested)",
    nn.RNNCellBase: "abstract base of RNNCell/LSTMCell/GRUCell (those are tested)",
    **{
        getattr(nn, n): "lazy module: after its first call it is the eager class (tested); "
        "convert an initialised model"
        for n in (
            "LazyBatchNorm1d",
            "LazyBatchNorm2d",
            "LazyBatchNorm3d",
            "LazyConv1d",
            "LazyConv2d",
            "LazyConv3d",
            "LazyConvTranspose1d",
            "LazyConvTranspose2d",
            "LazyConvTranspose3d",
            "LazyInstanceNorm1d",
            "LazyInstanceNorm2d",
            "LazyInstanceNorm3d",
            "LazyLinear",
        )
        if hasattr(nn, n)
    },
}
