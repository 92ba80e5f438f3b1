"""Recipes: pretraining, adaptation and the studies, composed from the packages below
(data, models, tasks, engine, evaluate) into runs. Nothing below imports them."""
