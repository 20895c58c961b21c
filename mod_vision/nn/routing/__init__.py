"""Mixture-of-Depths token routing, one module per concern:

- mechanism: the pure functions: k for a capacity, top-k in raster order, and `route_tokens`, which runs a block on the
  chosen tokens and passes the rest on unchanged;
- record: what a forward routed, recorded on request (`record_routing`);
- padding: which token cells are letterbox or flat padding, for the routers and the routing metrics alike;
- scorers: the per-token scorer and object predictor a router owns;
- router: `TokenRouter`, which decides which tokens a routed block processes, and `RoutedBlock`, timm's ViT block
  routed;
- factory: `RouterSpec`, the one argument through which every routed block kind gets its routers, and `router_spec`,
  which reads it from a YAML layer's keywords;
- controls: a model's routers found, set together by the one setter `set_routing` (capacity, dynamic mode, policy),
  read back (`routing_mode`) or restored;
- losses: object supervision of the routers (`router_aux_loss`, `router_rank_loss`), and the distillation of a
  low-capacity forward from the full one (`capacity_distill_loss`).

Everything public is importable from here. Checkpoints pickled before the split name the routing modules by this
package's path (`mod_vision.nn.routing.TokenRouter`, ...): these re-exports are what loads them.
"""

from .controls import (
    DYNAMIC,
    KEEP,
    STATIC,
    dynamic_bounds,
    native_model,
    routed_blocks,
    routing_kept,
    routing_mode,
    routing_restorer,
    set_capacity,
    set_dynamic,
    set_policy,
    set_routing,
    set_static,
    stage_summary,
)
from .factory import DENSE, ROUTER_KEYWORDS, RouterSpec, router_spec
from .losses import (
    RANK_KINDS,
    box_overlaps,
    capacity_distill_loss,
    dilate_tokens,
    object_tokens,
    router_aux_loss,
    router_rank_loss,
)
from .mechanism import check_budget, check_capacity, check_floor, route_tokens, tokens_for, topk_raster
from .padding import (
    BASE_CELL,
    LETTERBOX_FILL,
    constant_cells,
    current_padding,
    forward_state,
    levels_from_pixels,
    padding_levels,
    pixel_extremes,
    routing_input,
    token_stride,
)
from .record import (
    BlockRouting,
    RoutingRecord,
    active_record,
    join_images,
    record_computed,
    record_routing,
    token_share,
)
from .router import DECISIONS, GATES, Decision, RoutedBlock, TokenRouter
from .scorers import ObjectPredictor, Scorer

__all__ = [
    "BASE_CELL", "DECISIONS", "DENSE", "DYNAMIC", "GATES", "KEEP", "LETTERBOX_FILL", "RANK_KINDS", "ROUTER_KEYWORDS",
    "STATIC", "BlockRouting", "Decision", "ObjectPredictor", "RoutedBlock", "RouterSpec", "RoutingRecord", "Scorer",
    "TokenRouter", "active_record", "box_overlaps", "capacity_distill_loss", "check_budget", "check_capacity",
    "check_floor", "constant_cells",
    "current_padding", "dilate_tokens", "dynamic_bounds", "forward_state", "join_images", "levels_from_pixels",
    "native_model", "object_tokens",
    "padding_levels", "pixel_extremes", "record_computed", "record_routing", "route_tokens", "routed_blocks",
    "router_aux_loss", "router_rank_loss", "router_spec", "routing_input", "routing_kept", "routing_mode",
    "routing_restorer", "set_capacity", "set_dynamic", "set_policy", "set_routing", "set_static", "stage_summary",
    "token_share", "token_stride", "tokens_for", "topk_raster",
]
