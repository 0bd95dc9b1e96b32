"""Training, evaluation and the seed experiments for hemascan models (headless: no Qt).

Shape follows the torchvision classification references: ``data`` builds datasets and
splits, ``engine`` has ``train_one_epoch`` / ``evaluate`` / ``run``, ``metrics`` the
numbers, ``baselines`` the classical comparisons, ``cli`` the commands.
"""
