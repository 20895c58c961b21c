from .routing import (
    Router,
    RoutedBlock,
    check_capacity,
    routed_blocks,
    router_aux_loss,
    routing_masks,
    set_dynamic,
    token_share,
    tokens_for,
)
from .tasks import MoDDetectionModel, MoDSegmentationModel, load_model_yaml, mod_parser, parse_model
from .vit import MoDViTStage, PatchEmbed

__all__ = [
    "MoDDetectionModel", "MoDSegmentationModel", "MoDViTStage", "PatchEmbed", "RoutedBlock", "Router",
    "check_capacity", "load_model_yaml", "mod_parser", "parse_model", "routed_blocks", "router_aux_loss", "routing_masks", "set_dynamic",
    "token_share", "tokens_for",
]
