echo "deploying to $WERCKER_DEPLOY_TARGET"
