"""Names fixed by docs/DESIGN: topics, buckets, run tags."""

TOPIC_REQUESTS = "agentflow.workflow.requests"
TOPIC_REQUESTS_DLQ = "agentflow.workflow.requests.dlq"
TOPIC_RESULTS = "agentflow.workflow.results"
TOPIC_APPROVALS = "agentflow.workflow.approvals"
TOPIC_APPROVALS_DLQ = "agentflow.workflow.approvals.dlq"
TOPIC_DOCUMENTS = "agentflow.documents"
TOPIC_DOCUMENTS_DLQ = "agentflow.documents.dlq"
TOPICS = (
    TOPIC_REQUESTS,
    TOPIC_REQUESTS_DLQ,
    TOPIC_RESULTS,
    TOPIC_APPROVALS,
    TOPIC_APPROVALS_DLQ,
    TOPIC_DOCUMENTS,
    TOPIC_DOCUMENTS_DLQ,
)

BUCKET_DOCUMENTS = "agentflow-documents"
BUCKET_ARTIFACTS = "agentflow-artifacts"
BUCKET_COMPUTE_LOGS = "dagster-compute-logs"
BUCKETS = (BUCKET_DOCUMENTS, BUCKET_ARTIFACTS, BUCKET_COMPUTE_LOGS)

TAG_PLAN_ID = "agentflow/plan_id"
TAG_EVENT_ID = "agentflow/event_id"
TAG_WORKFLOW = "agentflow/workflow"
TAG_TENANT = "agentflow/tenant"
TAG_TRACE_ID = "agentflow/trace_id"
