if [ -z "$WERCKER_GREET_TO" ]; then
  fail "nobody to greet"
fi
info "greeting from $WERCKER_STEP_NAME"
echo "greet: $WERCKER_GREET_TO$WERCKER_GREET_PUNCTUATION"
