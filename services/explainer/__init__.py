"""Explainer service: saliency maps and reports for the inputs behind each violation."""
