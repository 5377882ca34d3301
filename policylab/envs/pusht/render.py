"""Pixel-exact PushT drawing: Diffusion Policy's pygame look, headless.

DP draws with its own subclass of pymunk's debug-draw options (filled polygons in a 1.2x lighter
shade with 2 px "fat" outlines, a two-tone agent disc, anti-aliased contact-point segments). The
keypoint definition is computed from these very pixels (see `keypoints.py`), so the drawing is
part of the task definition, not only of its looks. Every drawing call below reproduces DP's
integer rounding on purpose.
"""

import cv2
import numpy as np
import pygame
import pymunk
from pymunk.space_debug_draw_options import SpaceDebugColor

WINDOW_SIZE = 512
BACKGROUND = (255, 255, 255)
LIGHTEN = 1.2  # DP's fill shade for polygons and the agent's inner disc
POLY_OUTLINE_RADIUS = 2  # DP overrides pymunk's polygon radius (0) to draw a visible outline
AGENT_RIM = 4  # px of darker rim around the agent disc
MARKER_REFERENCE_SIZE = 96  # DP defines the action cross at a 96 px frame and scales it
MARKER_SIZE = 8
MARKER_THICKNESS = 1
MARKER_COLOR = (255, 0, 0)


def _px(p) -> tuple[int, int]:
    """World point -> pygame pixel; y already points down in PushT, so only rounding."""
    return round(p[0]), round(p[1])


def _lighter(color: SpaceDebugColor) -> SpaceDebugColor:
    rgba = np.minimum(LIGHTEN * np.float32([color.r, color.g, color.b, color.a]), np.float32(255))
    return SpaceDebugColor(*rgba)


class DPDrawOptions(pymunk.SpaceDebugDrawOptions):
    """pymunk debug-draw callbacks that reproduce DP's `pymunk_override.DrawOptions` pixels."""

    def __init__(self, surface: pygame.Surface):
        self.surface = surface
        super().__init__()

    def draw_circle(self, pos, angle, radius, outline_color, fill_color):
        center = _px(pos)
        pygame.draw.circle(self.surface, fill_color.as_int(), center, round(radius), 0)
        pygame.draw.circle(
            self.surface, _lighter(fill_color).as_int(), center, round(radius - AGENT_RIM), 0
        )

    def draw_segment(self, a, b, color):
        # Only contact points reach this (DP keeps pymunk's DRAW_COLLISION_POINTS flag on).
        pygame.draw.aalines(self.surface, color.as_int(), False, [_px(a), _px(b)])

    def draw_fat_segment(self, a, b, radius, outline_color, fill_color):
        p1, p2 = _px(a), _px(b)
        color = fill_color.as_int()
        width = round(max(1, radius * 2))
        pygame.draw.lines(self.surface, color, False, [p1, p2], width)
        if width <= 2:
            return
        # Thick pygame lines have ragged ends and sides: DP adds a quad and two end caps.
        ox, oy = abs(p2[1] - p1[1]), abs(p2[0] - p1[0])
        if ox == 0 and oy == 0:
            return
        scale = radius / (ox * ox + oy * oy) ** 0.5
        ox, oy = round(ox * scale), round(oy * scale)
        quad = [(p1[0] - ox, p1[1] - oy), (p1[0] + ox, p1[1] + oy),
                (p2[0] + ox, p2[1] + oy), (p2[0] - ox, p2[1] - oy)]
        pygame.draw.polygon(self.surface, color, quad)
        pygame.draw.circle(self.surface, color, p1, round(radius))
        pygame.draw.circle(self.surface, color, p2, round(radius))

    def draw_polygon(self, verts, radius, outline_color, fill_color):
        points = [_px(v) for v in verts]
        pygame.draw.polygon(self.surface, _lighter(fill_color).as_int(), points + points[:1])
        for i in range(len(verts)):
            self.draw_fat_segment(
                verts[i], verts[(i + 1) % len(verts)], POLY_OUTLINE_RADIUS, fill_color, fill_color
            )

    def draw_dot(self, size, pos, color):
        pygame.draw.circle(self.surface, color.as_int(), _px(pos), round(size), 0)


def draw_space(space: pymunk.Space, goal_polygons=()) -> np.ndarray:
    """Draw goal polygons (filled, no outline) and then the space, as DP does.

    Args:
        space: the pymunk space; shapes need a `color` attribute (RGBA tuple).
        goal_polygons: sequence of (color, [(x, y), ...]) drawn first, under everything.
    Returns:
        (512, 512, 3) uint8 RGB canvas.
    """
    canvas = pygame.Surface((WINDOW_SIZE, WINDOW_SIZE))
    canvas.fill(BACKGROUND)
    for color, verts in goal_polygons:
        points = [_px(v) for v in verts]
        pygame.draw.polygon(canvas, color, points + points[:1])
    space.debug_draw(DPDrawOptions(canvas))
    # surfarray is (x, y, c); images are (y, x, c)
    return np.ascontiguousarray(pygame.surfarray.array3d(canvas).transpose(1, 0, 2))


def resize(canvas: np.ndarray, size: int) -> np.ndarray:
    """(512, 512, 3) uint8 -> (size, size, 3) uint8 with cv2's bilinear resize, as DP."""
    if size == canvas.shape[0]:
        return canvas.copy()
    return cv2.resize(canvas, (size, size))


def draw_action_marker(img: np.ndarray, action) -> np.ndarray:
    """Draw DP's red cross at the commanded agent target, in place.

    DP maps the action with `/512*96` whatever the frame size; we scale to the real frame
    size, which is identical at DP's 96 px and correct at other sizes.

    Args:
        img: (S, S, 3) uint8 frame.
        action: (2,) target in world pixels.
    """
    size = img.shape[0]
    coord = (np.asarray(action, dtype=np.float64) / WINDOW_SIZE * size).astype(np.int32)
    cv2.drawMarker(
        img,
        (int(coord[0]), int(coord[1])),
        color=MARKER_COLOR,
        markerType=cv2.MARKER_CROSS,
        markerSize=int(MARKER_SIZE / MARKER_REFERENCE_SIZE * size),
        thickness=max(1, int(MARKER_THICKNESS / MARKER_REFERENCE_SIZE * size)),
    )
    return img
