"""Deploys deploy/aws/sentinel.yaml on moto's server (on loopback, in this
process) with IAM enforcement on, checks what docs/aws.md says the stack
makes, that the server's role can do what it needs and nothing else, and
that `sentinel run` (argv[1]) reaches the bucket through that role assumed
on the emulator's STS.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

# The first three requests (an admin user, its policy, its key) go
# unauthenticated; every later one is checked against IAM.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"

import boto3  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from moto.iam import access_control  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

# moto 5.2.6 fails on a role whose trust policy has a statement naming
# only a service (`ec2.amazonaws.com`) when an AWS principal assumes it
# (`principal in None`); such a statement does not concern that caller.
_permitted = access_control.IAMPolicyStatement.is_action_permitted


def _is_action_permitted(self, action, resource="*", principal=None, incoming=None):
    named = self._statement.get("Principal")
    if principal and isinstance(named, dict) and "AWS" not in named:
        return access_control.PermissionResult.NEUTRAL
    return _permitted(self, action, resource, principal, incoming)


access_control.IAMPolicyStatement.is_action_permitted = _is_action_permitted

# And it keeps the inline policy of a role CloudFormation made as a
# document, where its access control expects the document's text.
_policy_init = access_control.IAMPolicy.__init__


def _policy_init_any(self, policy):
    if isinstance(policy, dict) and "policy_document" not in policy:
        policy = json.dumps(policy)
    _policy_init(self, policy)


access_control.IAMPolicy.__init__ = _policy_init_any

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
server.start()
host, port = server.get_host_and_port()
endpoint, sentinel = f"http://{host}:{port}", os.path.abspath(sys.argv[1])
region = "us-east-1"
checks = []


def check(ok, what):
    checks.append(what)
    if not ok:
        raise SystemExit(f"aws-check: FAILED: {what}")


def client(service, creds=None):
    creds = creds or {}
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=creds.get("AccessKeyId", "unauthenticated"),
        aws_secret_access_key=creds.get("SecretAccessKey", "unauthenticated"),
        aws_session_token=creds.get("SessionToken"),
    )


DENIED = ("AccessDenied", "AccessDeniedException", "403")
UNKNOWN = ("InvalidAccessKeyId", "InvalidClientTokenId", "UnrecognizedClientException")


def refused(call, codes=DENIED):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"] in codes
    return False


# The three unauthenticated requests: an administrator and its key.
iam = client("iam")
iam.create_user(UserName="admin")
iam.put_user_policy(
    UserName="admin",
    PolicyName="all",
    PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    ),
)
admin = iam.create_access_key(UserName="admin")["AccessKey"]

# IAM is enforced from here on.
check(refused(lambda: client("s3").list_buckets(), UNKNOWN), "an unknown caller is refused")

cfn = client("cloudformation", admin)
with open("deploy/aws/sentinel.yaml") as f:
    body = f.read()
cfn.create_stack(
    StackName="sentinel",
    TemplateBody=body,
    Parameters=[
        {"ParameterKey": "DomainName", "ParameterValue": "ci.example.com"},
        {"ParameterKey": "ImageId", "ParameterValue": "ami-12c6146b"},
        {"ParameterKey": "TrustedPrincipalArn", "ParameterValue": "arn:aws:iam::123456789012:user/admin"},
        {"ParameterKey": "ExternalId", "ParameterValue": "sentinel-check"},
    ],
    Capabilities=["CAPABILITY_IAM"],
)
for _ in range(100):
    stack = cfn.describe_stacks(StackName="sentinel")["Stacks"][0]
    if not stack["StackStatus"].endswith("IN_PROGRESS"):
        break
    time.sleep(0.2)
check(stack["StackStatus"] == "CREATE_COMPLETE", f"the stack is made ({stack['StackStatus']})")
out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
made = [r for r in cfn.describe_stack_resources(StackName="sentinel")["StackResources"] if "LogicalResourceId" in r]
kinds = {r["LogicalResourceId"]: r["ResourceType"] for r in made}
physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId") for r in made}
for logical, kind in [
    ("ResultsBucket", "AWS::S3::Bucket"),
    ("ServerRole", "AWS::IAM::Role"),
    ("ServerProfile", "AWS::IAM::InstanceProfile"),
    ("ServerSecurityGroup", "AWS::EC2::SecurityGroup"),
    ("Server", "AWS::EC2::Instance"),
]:
    check(kinds.get(logical) == kind, f"{logical} is a {kind}")
# What the emulator's CloudFormation cannot make (Secrets Manager secrets,
# bucket policies) is checked in the template itself.
from cfnlint.decode import decode_str

template, errors = decode_str(body)
check(not errors, "the template parses")
res = template["Resources"]
for logical in ("WebhookSecret", "SecretsKey"):
    check(res[logical]["Type"] == "AWS::SecretsManager::Secret", f"{logical} is a Secrets Manager secret")
check("GenerateSecretString" in res["WebhookSecret"]["Properties"], "the webhook secret is generated, never a parameter")
check(res["ResultsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]["Action"] == "s3:GetObject", "the bucket policy only lets readers read")
check(not any(p.get("NoEcho") for p in template["Parameters"].values()), "no secret is a parameter")

bucket = out["ResultsBucketName"]
s3 = client("s3", admin)
s3.head_bucket(Bucket=bucket)
# The emulator makes the bucket but not its website or CORS settings: those
# are checked in the template.
props = res["ResultsBucket"]["Properties"]
check(props["WebsiteConfiguration"]["IndexDocument"] == "index.html", "the bucket is a website")
check(
    props["CorsConfiguration"]["CorsRules"][0]["AllowedOrigins"] == [{"Fn::Sub": "https://${DomainName}"}],
    "CORS lets the live app's origin read",
)

role_arn = out["ServerRoleArn"]
role_name = role_arn.rsplit("/", 1)[1]
policy = client("iam", admin).get_role_policy(RoleName=role_name, PolicyName="sentinel-results-and-secrets")
document = policy["PolicyDocument"]
if isinstance(document, str):
    from urllib.parse import unquote

    import ast

    text = unquote(document)
    document = json.loads(text) if text.startswith("{\"") else ast.literal_eval(text)
statements = document["Statement"]
check(len(statements) == 3, "the role has one policy of three statements")
instance = physical["Server"]
user_data = client("ec2", admin).describe_instance_attribute(InstanceId=instance, Attribute="userData")
import base64

script = base64.b64decode(user_data["UserData"]["Value"]).decode()
check("secretsmanager get-secret-value" in script, "the instance reads its secrets from Secrets Manager at boot")
check("github.secret" in script and "PRIVATE" not in script, "no secret value in the user data")

# The role: what the server needs, and nothing else.
sts = client("sts", admin)
role = sts.assume_role(RoleArn=role_arn, RoleSessionName="check", ExternalId="sentinel-check")["Credentials"]
as_role = client("s3", role)
as_role.put_object(Bucket=bucket, Key="ci/probe.txt", Body=b"ok")
check(as_role.get_object(Bucket=bucket, Key="ci/probe.txt")["Body"].read() == b"ok", "the role writes and reads the results prefix")
check(refused(lambda: as_role.put_object(Bucket=bucket, Key="elsewhere/probe.txt", Body=b"x")), "the role cannot write outside the prefix")
s3.create_bucket(Bucket="another-bucket")
check(refused(lambda: as_role.put_object(Bucket="another-bucket", Key="ci/x", Body=b"x")), "the role cannot write another bucket")
check(refused(lambda: client("iam", role).list_users()), "the role cannot read IAM")
# sentinel itself, through the role assumed on the emulator's STS.
project = tempfile.mkdtemp(prefix="sentinel-aws-")
with open(os.path.join(project, "sentinel.yml"), "w") as f:
    f.write(
        "version: 1\nstages:\n  pluck:\n    step: jq-pluck@1\n"
        "    with: {input: '{\"k\": \"through-the-role\"}', filter: .k, raw: 'true'}\n"
    )
env = dict(os.environ)
env.update(
    AWS_ACCESS_KEY_ID=admin["AccessKeyId"],
    AWS_SECRET_ACCESS_KEY=admin["SecretAccessKey"],
    AWS_REGION=region,
)
env.pop("AWS_PROFILE", None)


def run(prefix):
    return subprocess.run(
        [sentinel, "-C", project, "run", "--json", "--s3", f"s3://{bucket}/{prefix}",
         "--s3-endpoint", endpoint, "--s3-region", region, "--s3-path-style",
         "--s3-role-arn", role_arn, "--s3-external-id", "sentinel-check"],
        env=env, capture_output=True, text=True, timeout=120,
    )


done = run("ci")
check(done.returncode == 0, f"sentinel run with the role: {done.stderr}")
run_id = json.loads(done.stdout.strip().splitlines()[-1])["id"]
doc = json.loads(as_role.get_object(Bucket=bucket, Key=f"ci/run/{run_id}/run.json")["Body"].read())
check(doc["status"] == "succeeded", "run.json reached the bucket through the assumed role")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ci/").get("Contents", [])]
check(any(k.startswith("ci/runs/") for k in keys), f"the index reached the bucket too: {keys}")
outside = run("elsewhere")
check("wait" in outside.stderr, f"outside the role's prefix the results wait and say so: {outside.stderr}")
listed = s3.list_objects_v2(Bucket=bucket, Prefix="elsewhere/")
check(listed.get("KeyCount", 0) == 0, "nothing lands outside the role's prefix")

server.stop()
print(f"aws-check: {len(checks)} checks passed on the emulator", file=sys.stderr)
