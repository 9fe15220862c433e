"""Template definitions (spec section 5) and a fake ``fetch_page`` shared by the
``test_templates_*`` files.
"""

from __future__ import annotations

import asyncio
from typing import Any

from omnichannel_whatsapp.templates import parse_template

WABA = "102290129340398"


# ---------------------------------------------------------------- definitions (spec section 5)

ORDER_UPDATE = {
    "id": "1192339204654487",
    "name": "order_update",
    "language": "en_US",
    "status": "APPROVED",
    "category": "UTILITY",
    "parameter_format": "POSITIONAL",
    "components": [
        {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}", "example": {"header_text": ["#8899"]}},
        {
            "type": "BODY",
            "text": "Hi {{1}}, your order {{2}} ships {{3}}.",
            "example": {"body_text": [["Pablo", "8899", "today"]]},
        },
        {"type": "FOOTER", "text": "Reply STOP to opt out"},
        {
            "type": "BUTTONS",
            "buttons": [
                {"type": "QUICK_REPLY", "text": "Stop"},
                {
                    "type": "URL",
                    "text": "Track",
                    "url": "https://shop.example/track/{{1}}",
                    "example": ["https://shop.example/track/8899"],
                },
            ],
        },
    ],
    "quality_score": {"score": "GREEN", "date": 1720000000},
    "rejected_reason": "NONE",
}

SHIPPING_NAMED = {
    "id": "2",
    "name": "shipping_named",
    "language": "en_US",
    "status": "APPROVED",
    "category": "UTILITY",
    "parameter_format": "NAMED",
    "components": [
        {
            "type": "HEADER",
            "format": "TEXT",
            "text": "Order {{order}}",
            "example": {"header_text_named_params": [{"param_name": "order", "example": "8899"}]},
        },
        {
            "type": "BODY",
            "text": "Hi {{first_name}}, order {{order}} is on its way. Thanks, {{first_name}}!",
            "example": {
                "body_text_named_params": [
                    {"param_name": "first_name", "example": "Jessica"},
                    {"param_name": "order", "example": "8899"},
                ]
            },
        },
    ],
}


def entry(name: str, *components: dict[str, Any], language="en_US", status="APPROVED", **extra):
    return {
        "id": f"id-{name}-{language}",
        "name": name,
        "language": language,
        "status": status,
        "category": extra.pop("category", "MARKETING"),
        "parameter_format": extra.pop("parameter_format", "POSITIONAL"),
        "components": list(components),
        **extra,
    }


def body(text: str) -> dict[str, Any]:
    return {"type": "BODY", "text": text}


def header(fmt: str, text: str | None = None) -> dict[str, Any]:
    return {"type": "HEADER", "format": fmt, **({"text": text} if text is not None else {})}


def buttons(*items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "BUTTONS", "buttons": list(items)}


PROMO_IMAGE = entry(
    "promo_image",
    {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["4::aW..."]}},
    body("Save {{1}} today"),
    buttons(
        {"type": "COPY_CODE", "example": "SAVE20"},
        {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "+15550001111"},
        {"type": "URL", "text": "Shop", "url": "https://shop.example/sale"},
    ),
)
STORE_LOCATION = entry("store_location", header("LOCATION"), body("Come and see us."))
VIDEO_TOUR = entry("video_tour", header("VIDEO"), body("Take the tour."))
OTP_CODE = entry(
    "otp_code",
    body("{{1}} is your verification code."),
    buttons({"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}),
    category="AUTHENTICATION",
)
STATIC_HEADER = entry("static_header", header("TEXT", "Welcome"), body("Nice to meet you."))
PLAIN = entry("plain", body("Hello there."))
PAUSED = entry("paused_promo", body("Big sale."), status="PAUSED")
ORDER_UPDATE_PT = {**ORDER_UPDATE, "id": "3", "language": "pt_BR"}

RAW = [
    ORDER_UPDATE,
    ORDER_UPDATE_PT,
    SHIPPING_NAMED,
    PROMO_IMAGE,
    STORE_LOCATION,
    VIDEO_TOUR,
    OTP_CODE,
    STATIC_HEADER,
    PLAIN,
    PAUSED,
]
KNOWN = [parse_template(t) for t in RAW]


class FakeGraph:
    """``fetch_page`` over pages chained by cursors; records every call."""

    def __init__(self, templates: list[dict[str, Any]], page_size: int = 3) -> None:
        self.pages = [templates[i : i + page_size] for i in range(0, len(templates), page_size)] or [[]]
        self.calls: list[tuple[str, dict[str, str] | None]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, target, params):
        self.calls.append((target, dict(params) if params is not None else None))
        if self.gate is not None:
            await self.gate.wait()
        after = (params or {}).get("after")
        index = int(after[1:]) if after else 0
        page: dict[str, Any] = {"data": self.pages[index]}
        paging: dict[str, Any] = {"cursors": {"before": f"c{index}", "after": f"c{index + 1}"}}
        if index + 1 < len(self.pages):
            paging["next"] = f"https://graph.example/v23.0/{WABA}/message_templates?after=c{index + 1}"
        page["paging"] = paging
        return page
