# Variables every bundle shares.
export BUNDLING_HOME=/opt/bundling
export WHEELHOUSE=/opt/bundling/wheelhouse
