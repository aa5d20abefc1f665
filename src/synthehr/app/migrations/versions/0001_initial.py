"""Initial feedback store: scenarios, review queue, reviews, promoted audit rules.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scenarios",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_count", sa.Integer(), nullable=False),
    )
    op.create_table(
        "review_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("record_key", sa.String(64), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("model_type", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(200), nullable=False),
        sa.Column("record_values", sa.JSON(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n_reviews", sa.Integer(), nullable=False),
        sa.Column("n_flags", sa.Integer(), nullable=False),
    )
    op.create_index("ix_review_records_record_key", "review_records", ["record_key"], unique=True)
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("record_id", sa.Integer(), sa.ForeignKey("review_records.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reviewer", sa.String(100), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("record_id", "reviewer", name="uq_review_record_reviewer"),
    )
    op.create_index("ix_reviews_record_id", "reviews", ["record_id"])
    op.create_table(
        "audit_rules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("rule_id", sa.String(64), nullable=False, unique=True),
        sa.Column("review_id", sa.Integer(), sa.ForeignKey("reviews.id", ondelete="SET NULL"), nullable=True),
        sa.Column("pattern", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("rationale", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("match_rate", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("audit_rules")
    op.drop_index("ix_reviews_record_id", table_name="reviews")
    op.drop_table("reviews")
    op.drop_index("ix_review_records_record_key", table_name="review_records")
    op.drop_table("review_records")
    op.drop_table("scenarios")
