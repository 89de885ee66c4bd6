"""Tests of meshkit and its examples."""
