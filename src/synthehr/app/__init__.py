"""Clinician web app: edit a patient and reconstruct, build scenarios, review records, keep feedback.

`synthehr serve --model MODEL_DIR [--data PREPARED_DIR]` starts it on http://127.0.0.1:8000.
Python: `create_app(Settings(models=[...], data=...))` returns the FastAPI app (needs the `app` extra:
fastapi, uvicorn, sqlalchemy, alembic).
"""

from synthehr.app.settings import Settings, user_data_dir


def create_app(settings: Settings):
    from synthehr.app.server import create_app as _create

    return _create(settings)


def load_user_rules(path=None):
    """Clinician-promoted audit rules (see synthehr.app.review.load_user_rules)."""
    from synthehr.app.review import load_user_rules as _load

    return _load(path)


__all__ = ["Settings", "create_app", "load_user_rules", "user_data_dir"]
