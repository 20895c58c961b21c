from .blocks import ABlockPair, MoDA2C2f, TokenABlock
from .routing import (
    RoutedBlock,
    RoutingRecord,
    Scorer,
    TokenRouter,
    check_capacity,
    record_routing,
    route_tokens,
    routed_blocks,
    router_aux_loss,
    set_capacity,
    set_dynamic,
    set_policy,
    tokens_for,
)
from .tasks import MoDDetectionModel, MoDSegmentationModel, load_model_yaml, mod_parser, parse_model
from .vit import MoDViTStage, PatchEmbed

__all__ = [
    "ABlockPair", "MoDA2C2f", "MoDDetectionModel", "MoDSegmentationModel", "MoDViTStage", "PatchEmbed", "RoutedBlock",
    "RoutingRecord", "Scorer", "TokenABlock", "TokenRouter", "check_capacity", "load_model_yaml", "parse_model",
    "mod_parser", "record_routing", "route_tokens", "routed_blocks", "router_aux_loss", "set_capacity", "set_dynamic",
    "set_policy", "tokens_for",
]
