"""Outbound HTTP the product makes itself (hostile URLs: weights, images, webhooks)."""
