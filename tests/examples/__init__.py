"""Tests of the e-commerce example."""
