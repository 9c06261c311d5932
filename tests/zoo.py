"""Architecture zoo: models users bring, each with inputs; weights perturbed.

Every model maps its input to ``(b, c)``. Zero-initialised tensors (ViT heads,
LoRA B, LayerNorm/BatchNorm biases) would make a Jacobian reference vacuous, so
:func:`perturbed` adds noise to every parameter and randomises BatchNorm statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrizations

B, L, E, C = 4, 5, 8, 3  # batch, sequence, width, outputs


@dataclass
class ZooCase:
    id: str
    make_model: Callable[[], nn.Module]
    make_x: Callable[[], object]
    #: tensors (by name fragment) that must take the fast path
    fast: tuple[str, ...] = ()


def perturbed(model: nn.Module, scale: float = 0.3) -> nn.Module:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in model.modules():
            if (
                isinstance(m, nn.modules.batchnorm._BatchNorm)
                and m.running_mean is not None
            ):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval()


class Pool(nn.Module):
    """Mean over the sequence, then a Linear head: (b, t, e) -> (b, c)."""

    def __init__(self, body: nn.Module, width: int = E, seq_first: bool = False):
        super().__init__()
        self.body, self.head, self.seq_first = body, nn.Linear(width, C), seq_first

    def forward(self, x):  # x: (b, t, e); a sequence-first body gets (t, b, e)
        if self.seq_first:
            return self.head(self.body(x.transpose(0, 1)).mean(0))
        return self.head(self.body(x).mean(1))


class SelfAttention(nn.Module):
    def __init__(self, mask: bool, batch_first: bool = True, bias: bool = True):
        super().__init__()
        self.att = nn.MultiheadAttention(E, 2, batch_first=batch_first, bias=bias)
        self.mask, self.batch_first = mask, batch_first

    def forward(self, x):
        pad = None
        if self.mask:  # last position of every other sample is padding
            pad = torch.zeros(
                x.shape[0 if self.batch_first else 1], L, dtype=torch.bool
            )
            pad[::2, -1] = True
        return self.att(x, x, x, key_padding_mask=pad, need_weights=False)[0]


class CrossAttention(nn.Module):
    """Query from x, keys/values of other widths (kdim/vdim) from x too."""

    def __init__(self):
        super().__init__()
        self.k_in, self.v_in = nn.Linear(E, 6), nn.Linear(E, 4)
        self.att = nn.MultiheadAttention(E, 2, kdim=6, vdim=4, batch_first=True)

    def forward(self, x):
        pad = torch.zeros(x.shape[0], L, dtype=torch.bool)
        pad[1::2, 0] = True
        return self.att(x, self.k_in(x), self.v_in(x), key_padding_mask=pad)[0]


class PackedCross(nn.Module):
    """Same-width cross-attention: query != key, so in_proj_weight is split."""

    def __init__(self):
        super().__init__()
        self.mem = nn.Linear(E, E)
        self.att = nn.MultiheadAttention(E, 2, batch_first=True)

    def forward(self, x):
        m = self.mem(x)
        return self.att(x, m, m)[0]


class TiedLM(nn.Module):
    """Embedding whose weight is also the output head's (as in LM heads)."""

    def __init__(self, V: int = 11):
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.mix = nn.Linear(E, E)
        self.head = nn.Linear(E, V, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens):
        h = torch.tanh(self.mix(self.emb(tokens))).mean(1)
        return self.head(h)


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(E, E)
        self.head = nn.Linear(E, C)

    def forward(self, x):
        return self.head(self.lin(torch.tanh(self.lin(x))).mean(1))


class FunctionalParent(nn.Module):
    """A Linear's weight also used functionally by its parent."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(E, E)
        self.head = nn.Linear(E, C)

    def forward(self, x):
        h = torch.tanh(self.lin(x)) + x @ self.lin.weight.T
        return self.head(h.mean(1))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(E, 6, batch_first=True)
        self.head = nn.Linear(6, C)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def conv_stack(*layers) -> nn.Module:
    return nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(C))


#: tensors of a sequence-first ``nn.TransformerEncoder`` that take the fast path
SEQ_FIRST_FAST = ("in_proj_weight", "linear1.weight", "linear2.bias")
SEQ_FIRST_FAST += ("norm1.weight", "norm2.bias")


def seq_first_encoder() -> nn.Module:
    """Two ``batch_first=False`` layers and a final LayerNorm: ``(t, b, e)``."""
    layer = nn.TransformerEncoderLayer(E, 2, 12, dropout=0.0)
    return nn.TransformerEncoder(
        layer, 2, norm=nn.LayerNorm(E), enable_nested_tensor=False
    )


class SelfDecoder(nn.Module):
    """A sequence-first decoder layer attending to its own input: ``(t, b, e)``."""

    def __init__(self):
        super().__init__()
        self.dec = nn.TransformerDecoderLayer(E, 2, 12, dropout=0.0)

    def forward(self, x):
        return self.dec(x, x.tanh())


class SeqFirstMisused(nn.Module):
    """Calls a sequence-first layer's ``linear1`` outside the layer on batch-first
    rows (b, t, e) with t == b: the layout the rule assumes is wrong, and only the
    sample check can tell."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(E, 2, 12, dropout=0.0)
        self.head = nn.Linear(12, C)

    def forward(self, x):
        h = self.layer.linear1(x).tanh()  # (b, t, 12), batch leading
        return self.head(h.mean(1))


def _seq():
    return torch.randn(B, L, E)


def _tokens():
    return torch.randint(11, (B, L))


def _img(ch=2, s=6):
    return lambda: torch.randn(B, ch, s, s)


def torchvision_resnet18():
    from torchvision.models import resnet18

    return resnet18(num_classes=C)


def torchvision_vit():
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=8,
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=12,
        num_classes=C,
    )


class HF(nn.Module):
    """A Hugging Face model from a config (no download), logits out; dict inputs."""

    def __init__(self, kind: str, lora: bool):
        super().__init__()
        import transformers

        if kind == "bert":
            cfg = transformers.BertConfig(
                vocab_size=30,
                hidden_size=8,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=12,
                max_position_embeddings=16,
                num_labels=C,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
            net = transformers.BertForSequenceClassification(cfg)
            targets = ["query", "value"]
        else:
            cfg = transformers.GPT2Config(
                vocab_size=30,
                n_embd=8,
                n_layer=2,
                n_head=2,
                n_positions=16,
                num_labels=C,
                pad_token_id=0,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            )
            net = transformers.GPT2ForSequenceClassification(cfg)
            targets = ["c_attn"]
        net.config.attn_implementation = "eager"
        if lora:
            import peft

            net = peft.get_peft_model(
                net, peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets)
            )
        self.net = net

    def forward(self, batch):
        return self.net(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits


def _hf_x():
    ids = torch.randint(1, 30, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[::2, -1] = 0
    return {"input_ids": ids, "attention_mask": mask}


ZOO = [
    ZooCase(
        "mha",
        lambda: Pool(SelfAttention(False)),
        _seq,
        ("in_proj_weight", "out_proj.weight"),
    ),
    ZooCase(
        "mha_pad_mask",
        lambda: Pool(SelfAttention(True)),
        _seq,
        ("in_proj_weight", "out_proj.weight"),
    ),
    ZooCase(
        "mha_seq_first",
        lambda: Pool(SelfAttention(True, batch_first=False), seq_first=True),
        _seq,
        ("in_proj_weight",),
    ),
    ZooCase(
        "mha_cross_kdim_vdim_mask",
        lambda: Pool(CrossAttention()),
        _seq,
        ("q_proj_weight", "k_proj_weight", "out_proj.weight"),
    ),
    ZooCase(
        "mha_packed_cross", lambda: Pool(PackedCross()), _seq, ("out_proj.weight",)
    ),
    ZooCase(
        "encoder_layer_post_norm",
        lambda: Pool(
            nn.TransformerEncoderLayer(E, 2, 12, dropout=0.0, batch_first=True)
        ),
        _seq,
        ("in_proj_weight", "linear1.weight"),
    ),
    ZooCase(
        "encoder_layer_pre_norm",
        lambda: Pool(
            nn.TransformerEncoderLayer(
                E, 2, 12, dropout=0.0, batch_first=True, norm_first=True
            )
        ),
        _seq,
        ("in_proj_weight", "norm1.weight"),
    ),
    ZooCase(
        "encoder_seq_first",
        lambda: Pool(seq_first_encoder(), seq_first=True),
        _seq,
        SEQ_FIRST_FAST + ("body.norm.weight",),
    ),
    ZooCase(  # sequence length == batch: only the layer's layout tells them apart
        "encoder_seq_first_square",
        lambda: Pool(seq_first_encoder(), seq_first=True),
        lambda: torch.randn(B, B, E),
        SEQ_FIRST_FAST,
    ),
    ZooCase(
        "decoder_layer_seq_first",
        lambda: Pool(SelfDecoder(), seq_first=True),
        _seq,
        ("self_attn.in_proj_weight", "multihead_attn.out_proj.weight")
        + ("linear1.weight", "norm3.weight"),
    ),
    ZooCase(  # a seq-first layer's Linear called on batch-first rows: not fast
        "seq_first_linear_misused",
        SeqFirstMisused,
        lambda: torch.randn(B, B, E),
    ),
    ZooCase("tied_embedding_head", TiedLM, _tokens, ("emb.weight",)),
    ZooCase("module_called_twice", CalledTwice, _seq, ("lin.weight",)),
    ZooCase("param_used_by_parent", FunctionalParent, _seq, ("head.weight",)),
    ZooCase("gru", lambda: Recurrent(nn.GRU), _seq),
    ZooCase("lstm", lambda: Recurrent(nn.LSTM), _seq),
    ZooCase(
        "weight_norm",
        lambda: nn.Sequential(
            parametrizations.weight_norm(nn.Linear(E, E)), nn.Tanh(), nn.Linear(E, C)
        ),
        lambda: torch.randn(B, E),
    ),
    ZooCase(
        "spectral_norm",
        lambda: nn.Sequential(
            parametrizations.spectral_norm(nn.Linear(E, E)), nn.Tanh(), nn.Linear(E, C)
        ),
        lambda: torch.randn(B, E),
    ),
    ZooCase(
        "conv1d_reflect",
        lambda: conv_stack(
            nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect"), nn.Tanh()
        ),
        lambda: torch.randn(B, 2, 7),
    ),
    ZooCase(
        "conv3d",
        lambda: conv_stack(nn.Conv3d(2, 3, 2), nn.Tanh()),
        lambda: torch.randn(B, 2, 3, 3, 3),
    ),
    ZooCase(
        "conv_transpose2d",
        lambda: conv_stack(nn.ConvTranspose2d(2, 3, 2, stride=2), nn.Tanh()),
        _img(),
    ),
    ZooCase(
        "grouped_depthwise_same",
        lambda: conv_stack(
            nn.Conv2d(2, 4, 3, groups=2),
            nn.Tanh(),
            nn.Conv2d(4, 4, 3, groups=4, padding="same"),
            nn.Conv2d(4, 3, 1),
        ),
        _img(),
        ("3.weight",),
    ),
    ZooCase(
        "group_instance_norm",
        lambda: conv_stack(
            nn.Conv2d(2, 4, 3),
            nn.GroupNorm(2, 4),
            nn.Tanh(),
            nn.InstanceNorm2d(4, affine=True),
        ),
        _img(),
        ("0.weight",),
    ),
    ZooCase(
        "batchnorm_eval",
        lambda: conv_stack(
            nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True)
        ),
        _img(),
        ("1.weight", "0.weight"),
    ),
    ZooCase(
        "torchvision_resnet18",
        torchvision_resnet18,
        lambda: torch.randn(2, 3, 16, 16),
        ("conv1.weight", "fc.weight"),
    ),
    ZooCase(
        "torchvision_vit",
        torchvision_vit,
        lambda: torch.randn(B, 3, 8, 8),
        ("in_proj_weight", "out_proj.weight", "mlp.0.weight"),
    ),
    ZooCase("hf_bert", lambda: HF("bert", False), _hf_x, ("query.weight",)),
    ZooCase("hf_bert_lora", lambda: HF("bert", True), _hf_x, ("lora_A",)),
    ZooCase("hf_gpt2", lambda: HF("gpt2", False), _hf_x),
    ZooCase("hf_gpt2_lora", lambda: HF("gpt2", True), _hf_x, ("lora_B",)),
]


def build(case: ZooCase) -> tuple[nn.Module, object]:
    """Model (perturbed, eval, lazy layers materialised) and its inputs."""
    model = case.make_model()
    x = case.make_x()
    with torch.no_grad():
        model(x)  # materialise LazyLinear
    return perturbed(model), x


class DirectTokens(nn.Module):
    """Parameters used in the model's own forward: a class token (batch
    expansion concatenated along the tokens), a position table (broadcast add),
    a layer-scale gamma and a 0-dim temperature (elementwise scales)."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, E))
        self.pos = nn.Parameter(torch.zeros(1, L + 1, E))
        self.gamma = nn.Parameter(torch.ones(E))
        self.temp = nn.Parameter(torch.tensor(1.0))
        self.inp = nn.Linear(E, E)
        self.head = nn.Linear(E, C)

    def forward(self, x):
        h = self.inp(x)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=1)
        h = h + self.pos
        h = h + self.gamma * torch.tanh(h)
        h += 0.5 * h  # an in-place op after the recorded uses
        return self.head(h[:, 0] + h.mean(1)) * self.temp


ZOO.append(
    ZooCase("direct_tokens_scale", DirectTokens, _seq, ("cls", "pos", "gamma", "temp"))
)
for _case in ZOO:
    if _case.id == "torchvision_vit":
        _case.fast = (*_case.fast, "class_token", "pos_embedding")
