#!/bin/sh
npm install $WERCKER_NPM_INSTALL_OPTIONS
